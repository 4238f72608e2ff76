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
    ],
)
def test_bad_values_name_the_setting_and_the_fix(conf, env, match):
    with pytest.raises(ConfigurationError, match=match):
        resolve_job_settings(conf, {}, environ=env)


def test_database_url_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_database_url({"master_database_url": "sqlite:///x"}, {}) == "sqlite:///x"
    env = {"CELERY_MASTER_DATABASE_URL": "postgresql://h/db"}
    assert resolve_database_url({"master_database_url": "sqlite:///x"}, env) == "postgresql://h/db"
    backend = {"result_backend": "db+postgresql://u:p@h/db", "broker_url": "redis://h"}
    assert resolve_database_url(backend, {}) == "postgresql://u:p@h/db"
    fs = resolve_database_url({"broker_url": "filesystem://"}, {})
    assert fs == f"sqlite:///{tmp_path / 'celery-master.sqlite3'}"


def test_sqlite_default_is_refused_with_a_multi_host_broker():
    with pytest.raises(ConfigurationError, match=r"master_database_url is not set .*\(redis://\)"):
        resolve_database_url({"broker_url": "redis://h:6379/0"}, {})
    with pytest.raises(ConfigurationError, match="amqp://"):
        resolve_database_url({}, {})
