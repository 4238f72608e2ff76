"""Ops: what operators run from outside a worker (``celery master ...``, the probe, watches).

May import: worker, election, jobs, store and the shared modules; nothing imports ops.
"""
