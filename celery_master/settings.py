"""Settings of one master job, resolved and validated at the edge.

Resolution per setting: per-job options > ``CELERY_MASTER_<NAME>`` environment
variable > ``app.conf.master_<name>`` > defaults. Values are seconds (Celery
style). The lease TTL is derived, never set: ``ttl = heartbeat_interval x
(max_heartbeat_retry_count + 1)``, which leaves the master one heartbeat
interval between its self-stoppage deadline and the moment a standby may take
over. Worst-case crash failover = ttl + check_interval + one round trip.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kombu.transport import resolve_transport
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError
from .redact import mask_url

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
logger = logging.getLogger(__name__)
ENV_PREFIX = "CELERY_MASTER_"
MISFIRE_POLICIES = ("once", "skip")
MIN_SECONDS, MAX_SECONDS = 0.01, 86400.0  # 10 ms .. 1 day, init_delay too
MAX_RETRY_COUNT = 1000
MAX_HEARTBEAT = 32767.0  # libpq's keepalives_idle: Linux's TCP_KEEPIDLE takes no more
MAX_TTL = (2**31 - 1) // 1000  # the fence's statement_timeout, ms in an int32: 24.8 days


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
    """One timing value; bounded so no wait or database timeout built from it can overflow."""
    fix = f"set {source} to a number of seconds from {MIN_SECONDS} to {MAX_SECONDS:.0f} (1 day)"
    if name == "max_heartbeat_retry_count":
        fix = f"set {source} to an integer from 1 to {MAX_RETRY_COUNT}"
        if isinstance(raw, bool):
            raise ConfigurationError(f"{source} ({raw!r}) must be an integer: {fix}")
        try:
            value = int(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise ConfigurationError(f"{source} ({raw!r}) is not an integer: {fix}") from None
        if not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{source} ({raw!r}) must be an integer >= 1: {fix}")
        if value > MAX_RETRY_COUNT:
            raise ConfigurationError(f"{source} ({raw!r}) is too large: {fix}")
        return value
    if isinstance(raw, bool):
        raise ConfigurationError(f"{source} ({raw!r}) must be a number: {fix}")
    try:
        fvalue = float(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{source} ({raw!r}) is not a number: {fix}") from None
    if not math.isfinite(fvalue) or fvalue <= 0:
        raise ConfigurationError(f"{source} ({raw!r}) must be greater than 0: {fix}")
    if fvalue < MIN_SECONDS:
        raise ConfigurationError(f"{source} ({raw!r}) is below {MIN_SECONDS} s: {fix}")
    if fvalue > MAX_SECONDS:
        raise ConfigurationError(f"{source} ({raw!r}) is above one day: {fix}")
    if name == "heartbeat_interval" and fvalue > MAX_HEARTBEAT:
        raise ConfigurationError(
            f"{source} ({raw!r}) is above {MAX_HEARTBEAT:.0f} s, the longest TCP keepalive "
            f"(keepalives_idle) a connection takes: set it to at most {MAX_HEARTBEAT:.0f}"
        )
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
    timing = JobSettings(**values)
    if timing.ttl > MAX_TTL:  # the database timeouts built from it must hold it
        raise ConfigurationError(
            f"the lease ttl {timing.ttl:.0f} s = master_heartbeat_interval "
            f"({timing.heartbeat_interval:g}) x (master_max_heartbeat_retry_count "
            f"({timing.max_heartbeat_retry_count}) + 1) is above {MAX_TTL} s (about 24.8 days), "
            "the longest statement_timeout PostgreSQL takes in the fence: lower either"
        )
    return timing


def _celery_setting(conf: Any, env: Mapping[str, str], name: str, *fallbacks: str) -> Any:
    """A setting as Celery's own ``Settings`` property reads it: its env variable first."""
    value = env.get("CELERY_" + name.upper(), "").strip()
    if value:
        return value
    for key in (name, *fallbacks):
        value = _conf_get(conf, key)
        if value:
            return value
    return None


def _transport_class(name: Any) -> type | None:
    try:
        return resolve_transport(name)  # type: ignore[no-any-return]
    except Exception:  # unknown alias, missing client library: not one we know is local
        return None


def _broker_spans_hosts(conf: Any, env: Mapping[str, str]) -> tuple[bool, str]:
    """(may span hosts, what the broker is), read as kombu connects: ``broker_transport`` wins."""
    from kombu.transport.filesystem import Transport as Filesystem
    from kombu.transport.memory import Transport as Memory

    urls = []
    for name in ("broker_url", "broker_read_url", "broker_write_url"):
        url = _celery_setting(conf, env, name, *(("broker_host",) if name == "broker_url" else ()))
        for one in url if isinstance(url, (list, tuple)) else [url]:
            if one:
                urls.append(str(one).split(";")[0])
    urls = urls or ["amqp://"]
    transport = _conf_get(conf, "broker_transport")
    if transport:
        shown = transport if isinstance(transport, str) else getattr(transport, "__name__", "?")
        candidates = [(transport, f"broker_transport {shown}")]
    else:
        schemes = [u.split("://", 1)[0].split("+", 1)[0].lower() for u in urls]
        candidates = [(scheme, f"{scheme}://") for scheme in schemes]
    for name, shown in candidates:
        cls = _transport_class(name)
        if not isinstance(cls, type) or not issubclass(cls, (Filesystem, Memory)):
            return True, shown
    return False, candidates[0][1]


def _check_sqlite(url: str, explicit: bool, spans: tuple[bool, str]) -> str:
    """Refuse in-memory SQLite, make a relative file absolute; warn on several hosts."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # parse_url names the setting when the engine is built
    if parsed.get_backend_name() != "sqlite":
        return url
    database = parsed.database or ""
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        raise ConfigurationError(
            f"master_database_url {mask_url(url)!r} is an in-memory SQLite database, one per "
            "process, which would make every worker master: set master_database_url to a file "
            "(sqlite:////abs/path.sqlite3) or to a database all workers share"
        )
    if database.startswith("file:"):
        return url
    if not Path(database).is_absolute():
        absolute = str(Path(database).resolve())
        url = parsed.set(database=absolute).render_as_string(hide_password=False)
        _log_once(
            logging.INFO,
            "master_database_url names the relative SQLite path %s: using %s",
            database,
            absolute,
        )
    if explicit and spans[0]:
        _log_once(
            logging.WARNING,
            "master_database_url is an SQLite file (%s) while the broker (%s) may span several "
            "hosts: workers on other hosts would use other files and elect their own masters; "
            "use a database all workers share unless every worker runs on this host",
            Path(make_url(url).database or "").resolve(),
            spans[1],
        )
    return url


@functools.cache
def _log_once(level: int, msg: str, *args: Any) -> None:
    """Said once per process: the bootstep and the CLI may resolve the URL more than once."""
    logger.log(level, msg, *args)


def resolve_database_url(conf: Any, environ: Mapping[str, str] | None = None) -> str:
    """The lease database URL of an app: one per app, shared by every lock name.

    The broker and result backend are read as Celery reads them (their
    ``CELERY_*`` environment variables first, ``broker_transport`` naming the
    transport really used). An SQLite file is only safe when every worker runs
    on one host, so the SQLite default is refused with a broker that can span
    hosts: the user would silently get one master per host.
    """
    env = os.environ if environ is None else environ
    spans = _broker_spans_hosts(conf, env)
    url = env.get(ENV_PREFIX + "DATABASE_URL", "").strip() or _conf_get(conf, "master_database_url")
    if url:
        return _check_sqlite(str(url), True, spans)
    backend = _celery_setting(conf, env, "result_backend")
    if isinstance(backend, str) and backend.startswith("db+"):
        return _check_sqlite(backend[len("db+") :], True, spans)
    if not spans[0]:
        return "sqlite:///" + str(Path.cwd() / DEFAULT_SQLITE_FILE)
    raise ConfigurationError(
        f"master_database_url is not set and the broker ({spans[1]}) may span several hosts, "
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
