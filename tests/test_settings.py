"""Settings resolution (options > env > app.conf > defaults) and messages that name the fix."""

from __future__ import annotations

import pytest

from celery_master.errors import ConfigurationError
from celery_master.settings import JobSettings, resolve_database_url, resolve_job_settings


def test_defaults_give_a_four_second_ttl_and_five_second_worst_case_failover():
    s = resolve_job_settings({}, {}, environ={})
    assert s == JobSettings(1.0, 1.0, 1.0, 3)
    assert s.ttl == 4.0 and s.self_stop_after == 3.0 and s.worst_case_failover == 5.0


def test_options_beat_environment_which_beats_app_conf():
    conf = {"master_check_interval": 7, "master_heartbeat_interval": 2}
    env = {"CELERY_MASTER_CHECK_INTERVAL": "3", "CELERY_MASTER_MAX_HEARTBEAT_RETRY_COUNT": "5"}
    s = resolve_job_settings(conf, {"check_interval": 0.5}, environ=env)
    assert (s.check_interval, s.heartbeat_interval, s.max_heartbeat_retry_count) == (0.5, 2.0, 5)
    assert resolve_job_settings(conf, {}, environ=env).check_interval == 3.0
    assert resolve_job_settings(conf, {}, environ={}).check_interval == 7.0


@pytest.mark.parametrize(
    ("conf", "env", "match"),
    [
        ({"master_check_interval": 0}, {}, r"app.conf.master_check_interval \(0\) must be greater"),
        ({"master_heartbeat_interval": -1}, {}, "master_heartbeat_interval"),
        ({}, {"CELERY_MASTER_INIT_DELAY": "soon"}, "CELERY_MASTER_INIT_DELAY .* not a number"),
        ({"master_max_heartbeat_retry_count": 0}, {}, "integer >= 1"),
        ({"master_max_heartbeat_retry_count": 1.5}, {}, "integer >= 1"),
        ({}, {"CELERY_MASTER_MAX_HEARTBEAT_RETRY_COUNT": "2.5"}, "not an integer"),
        ({"master_check_interval": float("nan")}, {}, "greater than 0"),
        ({"master_check_interval": True}, {}, "must be a number"),
        ({"master_check_interval": 0.005}, {}, r"master_check_interval \(0.005\) is below 0.01"),
        ({"master_heartbeat_interval": 86401}, {}, "master_heartbeat_interval .* above one day"),
        ({}, {"CELERY_MASTER_INIT_DELAY": "1e9"}, "CELERY_MASTER_INIT_DELAY .* above one day"),
        ({"master_init_delay": float("inf")}, {}, "master_init_delay .* greater than 0"),
        ({"master_max_heartbeat_retry_count": 10**6}, {}, "retry_count .* too large"),
    ],
)
def test_bad_values_name_the_setting_and_the_fix(conf, env, match):
    with pytest.raises(ConfigurationError, match=match):
        resolve_job_settings(conf, {}, environ=env)


def test_bounds_are_inclusive():
    s = resolve_job_settings({"master_init_delay": 0.01, "master_check_interval": 86400}, {}, {})
    assert (s.init_delay, s.check_interval) == (0.01, 86400.0)


def test_database_url_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs = {"broker_url": "filesystem://"}
    explicit = {"master_database_url": "sqlite:////abs/x", **fs}
    assert resolve_database_url(explicit, {}) == "sqlite:////abs/x"
    env = {"CELERY_MASTER_DATABASE_URL": "postgresql://h/db"}
    assert resolve_database_url(explicit, env) == "postgresql://h/db"
    backend = {"result_backend": "db+postgresql://u:p@h/db", "broker_url": "redis://h"}
    assert resolve_database_url(backend, {}) == "postgresql://u:p@h/db"
    fs = resolve_database_url({"broker_url": "filesystem://"}, {})
    assert fs == f"sqlite:///{tmp_path / 'celery-master.sqlite3'}"


def test_sqlite_default_is_refused_with_a_multi_host_broker():
    with pytest.raises(ConfigurationError, match=r"master_database_url is not set .*\(redis://\)"):
        resolve_database_url({"broker_url": "redis://h:6379/0"}, {})
    with pytest.raises(ConfigurationError, match="amqp://"):
        resolve_database_url({}, {})


def test_a_relative_sqlite_path_is_made_absolute_and_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO", logger="celery_master.settings")
    url = resolve_database_url({"master_database_url": "sqlite:///rel/leases.db"}, {})
    assert url == f"sqlite:///{tmp_path / 'rel' / 'leases.db'}"
    assert f"relative SQLite path rel/leases.db: using {tmp_path}" in caplog.text


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://", "sqlite:///f?mode=memory"]
)
def test_in_memory_sqlite_is_always_refused_naming_the_setting(url):
    with pytest.raises(ConfigurationError, match="master_database_url .* in-memory SQLite"):
        resolve_database_url({"master_database_url": url, "broker_url": "memory://"}, {})
    with pytest.raises(ConfigurationError, match="in-memory SQLite"):
        resolve_database_url({"broker_url": "memory://"}, {"CELERY_MASTER_DATABASE_URL": url})


def test_the_broker_is_read_as_celery_reads_it():
    fs = {"broker_url": "filesystem://"}
    with pytest.raises(ConfigurationError, match=r"master_database_url is not set .*\(redis://\)"):
        resolve_database_url(fs, {"CELERY_BROKER_URL": "redis://h:6379/0"})
    with pytest.raises(ConfigurationError, match="broker_transport redis"):
        resolve_database_url({"broker_url": "memory://", "broker_transport": "redis"}, {})
    with pytest.raises(ConfigurationError, match="amqp://"):
        resolve_database_url({**fs, "broker_read_url": "amqp://h//"}, {})
    local = {"broker_transport": "celery_master.transport:FilesystemTransport"}
    assert resolve_database_url(local, {"CELERY_BROKER_URL": "filesystem://"}).startswith(
        "sqlite:///"
    )
    env = {"CELERY_BROKER_URL": "redis://h", "CELERY_RESULT_BACKEND": "db+postgresql://u:p@h/d"}
    assert resolve_database_url(fs, env) == "postgresql://u:p@h/d"


def test_an_explicit_sqlite_file_with_a_multi_host_broker_warns_loudly(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'warned.db'}"
    assert resolve_database_url({"master_database_url": url, "broker_url": "redis://h"}, {}) == url
    assert "WARNING" in caplog.text and "may span several hosts" in caplog.text


@pytest.mark.parametrize("lease_db", [None, "sqlite://"])
def test_a_worker_whose_broker_spans_hosts_refuses_to_start_without_a_shared_database(
    make_cluster, redis_server, lease_db
):
    """app.conf says filesystem://, the environment says Redis: Celery uses Redis, so do we."""
    cluster = make_cluster("unused")
    del cluster.env["CELERY_MASTER_DATABASE_URL"]
    if lease_db:
        cluster.env["CELERY_MASTER_DATABASE_URL"] = lease_db
    cluster.env.pop("JOURNAL_FS_DIR")
    cluster.env["JOURNAL_BROKER_URL"] = "filesystem://"  # app.conf.broker_url
    cluster.env["CELERY_BROKER_URL"] = redis_server.url
    worker = cluster.start_worker(wait_ready=False)
    worker.proc.wait(60)
    log = worker.log_text()
    assert worker.proc.returncode != 0, log[-3000:]
    assert "master_database_url" in log, log[-3000:]
    assert ("in-memory SQLite" if lease_db else "(redis://) may span several hosts") in log
    assert not cluster.journal.starts(), "a master job ran"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=pw&sslmode=require", "postgresql://u@h/db?password=***"),
        ("postgresql://u@h/db?sslpassword=pw", "postgresql://u@h/db?sslpassword=***"),
        ("postgresql://u:pw@h:notaport/db?password=pw", "postgresql://u:***@h:notaport/db?pass"),
        ("x://u:pw@[bad/db?password=pw", "x://u:***@[bad/db?password=***"),
        ("u:pw@h/db", "*** (not a URL)"),
    ],
)
def test_mask_url_hides_every_password(url, shown):
    from celery_master.store.engine import mask_url

    masked = mask_url(url)
    assert masked.startswith(shown)
    assert "pw" not in masked.replace("password", "").replace("sslpassword", "")


@pytest.mark.parametrize(
    ("conf", "match"),
    [
        (
            {"master_heartbeat_interval": 32768},
            r"master_heartbeat_interval \(32768\) is above 32767 s.*keepalives_idle",
        ),
        (
            {"master_heartbeat_interval": 30000, "master_max_heartbeat_retry_count": 100},
            r"lease ttl 3030000 s = master_heartbeat_interval \(30000\) x "
            r"\(master_max_heartbeat_retry_count \(100\) \+ 1\).*statement_timeout",
        ),
    ],
)
def test_timings_the_database_could_not_take_are_refused_naming_the_fix(conf, match):
    with pytest.raises(ConfigurationError, match=match):
        resolve_job_settings(conf, {}, environ={})


def test_a_weight_the_membership_column_could_not_hold_is_refused():
    from celery_master.jobs.job import MasterJob

    with pytest.raises(ConfigurationError, match=r"weight=2147483648 .* from 1 to 1,000,000"):
        MasterJob("A", print, options={"weight": 2**31})
    assert MasterJob("A", print, options={"weight": 10**6}).options["weight"] == 10**6


@pytest.mark.parametrize(
    ("heartbeat", "retries"), [(32767, 64), (32768, 1), (86400, 3), (3000, 1000)]
)
def test_every_timing_the_settings_accept_connects_and_fences_on_postgresql(
    pg_url, heartbeat, retries
):
    """The largest accepted values reach the server as libpq options and SET LOCAL values:
    keepalives_idle (the heartbeat, at most 32,767 s) and the fence's statement_timeout (the
    ttl in ms, a 32-bit integer). A value past them is refused before it reaches a server."""
    from sqlalchemy import text

    from celery_master.store import LeaseStore, create_lease_engine

    conf = {"master_heartbeat_interval": heartbeat, "master_max_heartbeat_retry_count": retries}
    try:
        timing = resolve_job_settings(conf, {}, environ={})
    except ConfigurationError:
        assert heartbeat > 32767 or heartbeat * (retries + 1) > 2**31 / 1000
        return
    store = LeaseStore(create_lease_engine(pg_url, timeout=timing.heartbeat_interval))
    store.ensure_schema()
    store.ensure_rows(["A"])
    (epoch,) = store.acquire("h1", ["A"], {}, {"A": timing.ttl}).values()
    with store.engine.begin() as conn:  # the fence's bounds, as the elector computes them
        hold_ms, busy_ms = int(timing.heartbeat_interval * 1000), int(timing.ttl * 1000)
        assert store.fence(conn, "A", epoch, "h1", hold_ms, busy_ms)
        assert conn.execute(text("SHOW statement_timeout")).scalar()
