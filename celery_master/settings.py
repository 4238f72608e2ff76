"""Settings of one master job, resolved and validated at the edge.

Resolution per setting: per-job options > ``CELERY_MASTER_<NAME>`` environment
variable > ``app.conf.master_<name>`` > defaults. Values are seconds (Celery
style). The lease TTL is derived, never set: ``ttl = heartbeat_interval x
(max_heartbeat_retry_count + 1)``, which leaves the master one heartbeat
interval between its self-stoppage deadline and the moment a standby may take
over. Worst-case crash failover = ttl + check_interval + one round trip.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

__all__ = [
    "DEFAULTS",
    "TIMING_NAMES",
    "MISFIRE_POLICIES",
    "JobSettings",
    "resolve_beat_misfire",
    "resolve_database_url",
    "resolve_job_settings",
]

TIMING_NAMES = ("init_delay", "check_interval", "heartbeat_interval", "max_heartbeat_retry_count")
DEFAULTS: dict[str, float | int] = {
    "init_delay": 1.0,
    "check_interval": 1.0,
    "heartbeat_interval": 1.0,
    "max_heartbeat_retry_count": 3,
}
DEFAULT_SQLITE_FILE = "celery-master.sqlite3"
SINGLE_HOST_BROKERS = ("filesystem", "memory")
ENV_PREFIX = "CELERY_MASTER_"
MISFIRE_POLICIES = ("once", "skip")


@dataclass(frozen=True)
class JobSettings:
    """Timing of one lock name; frozen so the elector can share it without copies."""

    init_delay: float = 1.0
    check_interval: float = 1.0
    heartbeat_interval: float = 1.0
    max_heartbeat_retry_count: int = 3

    @property
    def ttl(self) -> float:
        """Lease length a standby waits out before taking over a silent lease."""
        return self.heartbeat_interval * (self.max_heartbeat_retry_count + 1)

    @property
    def self_stop_after(self) -> float:
        """How long after its last successful renewal was sent the master stops its job."""
        return self.heartbeat_interval * self.max_heartbeat_retry_count

    @property
    def worst_case_failover(self) -> float:
        return self.ttl + self.check_interval


def _conf_get(conf: Any, key: str) -> Any:
    try:
        return conf.get(key)
    except AttributeError:  # plain objects in tests
        return getattr(conf, key, None)


def _parse(name: str, raw: Any, source: str) -> float | int:
    fix = f"set {source} to a number of seconds greater than 0"
    if name == "max_heartbeat_retry_count":
        fix = f"set {source} to an integer >= 1"
        if isinstance(raw, bool):
            raise ConfigurationError(f"{source} ({raw!r}) must be an integer: {fix}")
        try:
            value = int(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise ConfigurationError(f"{source} ({raw!r}) is not an integer: {fix}") from None
        if not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{source} ({raw!r}) must be an integer >= 1: {fix}")
        return value
    if isinstance(raw, bool):
        raise ConfigurationError(f"{source} ({raw!r}) must be a number: {fix}")
    try:
        fvalue = float(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{source} ({raw!r}) is not a number: {fix}") from None
    if not math.isfinite(fvalue) or fvalue <= 0:
        raise ConfigurationError(f"{source} ({raw!r}) must be greater than 0: {fix}")
    return fvalue


def resolve_job_settings(
    conf: Any, options: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> JobSettings:
    """Resolve and validate the timing of one job; the error names the setting to fix."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in TIMING_NAMES:
        env_key = ENV_PREFIX + name.upper()
        if name in options and options[name] is not None:
            values[name] = _parse(name, options[name], f"option {name}=")
        elif env.get(env_key, "").strip():
            values[name] = _parse(name, env[env_key].strip(), f"environment variable {env_key}")
        elif _conf_get(conf, "master_" + name) is not None:
            raw = _conf_get(conf, "master_" + name)
            values[name] = _parse(name, raw, f"app.conf.master_{name}")
        else:
            values[name] = DEFAULTS[name]
    return JobSettings(**values)


def _broker_scheme(conf: Any) -> str:
    url = _conf_get(conf, "broker_url") or _conf_get(conf, "broker_read_url") or "amqp://"
    if isinstance(url, (list, tuple)):
        url = url[0]
    return str(url).split("://", 1)[0].split("+", 1)[0].lower()


def resolve_database_url(conf: Any, environ: Mapping[str, str] | None = None) -> str:
    """The lease database URL of an app: one per app, shared by every lock name.

    An SQLite file is only safe when every worker runs on one host, so the
    SQLite default is refused with a broker that can span hosts: the user
    would silently get one master per host.
    """
    env = os.environ if environ is None else environ
    url = env.get(ENV_PREFIX + "DATABASE_URL", "").strip() or _conf_get(conf, "master_database_url")
    if url:
        return str(url)
    backend = _conf_get(conf, "result_backend")
    if isinstance(backend, str) and backend.startswith("db+"):
        return backend[len("db+") :]
    scheme = _broker_scheme(conf)
    if scheme in SINGLE_HOST_BROKERS:
        return "sqlite:///" + str(Path.cwd() / DEFAULT_SQLITE_FILE)
    raise ConfigurationError(
        f"master_database_url is not set and the broker ({scheme}://) may span several hosts, "
        "where a local SQLite file would elect one master per host: set "
        "app.conf.master_database_url (or CELERY_MASTER_DATABASE_URL) to a database all "
        "workers share, e.g. postgresql+psycopg2://user:pw@db/proj"
    )


def resolve_beat_misfire(conf: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``master_beat_misfire``: {entry name: "once" | "skip"}; entries not named fire once.

    What a new beat master does with the slots of an entry missed during the
    failover gap: ``once`` sends one now (Celery's default), ``skip`` waits for
    the next slot. Environment: ``CELERY_MASTER_BEAT_MISFIRE`` as a JSON object.
    """
    env = os.environ if environ is None else environ
    key = ENV_PREFIX + "BEAT_MISFIRE"
    source, raw = "app.conf.master_beat_misfire", _conf_get(conf, "master_beat_misfire")
    if env.get(key, "").strip():
        source = f"environment variable {key}"
        try:
            raw = json.loads(env[key])
        except ValueError:
            raise ConfigurationError(
                f'{source} is not JSON: use e.g. {key}=\'{{"entry-name": "skip"}}\''
            ) from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f"{source} ({raw!r}) must map beat entry names to a policy, e.g. {{'report': 'skip'}}"
        )
    out: dict[str, str] = {}
    for name, policy in raw.items():
        if policy not in MISFIRE_POLICIES:
            raise ConfigurationError(
                f"{source}: unknown misfire policy {policy!r} for entry {name!r}: "
                f"use one of {', '.join(MISFIRE_POLICIES)}"
            )
        out[str(name)] = str(policy)
    return out
