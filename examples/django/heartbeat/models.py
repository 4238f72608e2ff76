"""One row per heartbeat, stamped with the master's fencing epoch."""

from __future__ import annotations

from django.db import models


class Heartbeat(models.Model):
    holder = models.CharField(max_length=300)
    epoch = models.BigIntegerField()
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
