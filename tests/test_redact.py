"""No text we show holds the lease database's password: URLs, parser, driver and CLI messages."""

from __future__ import annotations

import logging

import pytest

from celery_master.election.elector import Elector
from celery_master.errors import ConfigurationError
from celery_master.holder import Holder
from celery_master.jobs.job import MasterJob
from celery_master.redact import mask_url
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine
from celery_master.store.engine import parse_url
from tests.support.cli import run_master
from tests.support.cluster import wait_for

#: a libpq URI handed over through ``dsn=``: psycopg2 refuses its password's bad escape,
#: and its message repeats the password ("invalid percent-encoded token: "hunter%zz"")
DSN_URL = "postgresql+psycopg2:///x?dsn=postgresql://celery:hunter%25zz@127.0.0.1:1/x"
DSN_SECRET = "hunter"


def test_mask_url_keeps_a_password_with_an_unencoded_at_whole():
    masked = mask_url("postgresql://celery:p@ss@db/x")
    assert masked == "postgresql://celery:***@db/x"
    assert mask_url("postgresql://user@srv:pw@db/x") == "postgresql://user@srv:***@db/x"
    assert mask_url("postgresql://u:pw@db/da@tabase") == "postgresql://u:***@db/da@tabase"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg2:///x?dsn=host%3Ddb+password%3Dhunter2+user%3Dcelery",
            "postgresql+psycopg2:///x?dsn=host=db%20password=***%20user=celery",
        ),
        (
            "postgresql+psycopg2:///x?dsn=postgresql://celery:hunter2@db/x",
            "postgresql+psycopg2:///x?dsn=postgresql://celery:***@db/x",
        ),
    ],
)
def test_mask_url_hides_the_password_inside_a_dsn_value(url, shown):
    from celery_master.redact import url_secrets

    assert mask_url(url) == shown
    assert "hunter2" in url_secrets(url)


def test_a_password_with_an_unencoded_at_is_refused_before_any_driver_sees_it():
    """SQLAlchemy splits at the first '@': the password's tail became the host (and the port)."""
    for url in ("postgresql://celery:p@ss@db/x", "postgresql://celery:p@ss:wyrd@db/x"):
        with pytest.raises(ConfigurationError) as caught:
            parse_url(url)
        text = str(caught.value)
        assert "percent-encode it as %40" in text and "master_database_url" in text
        assert "ss@db" not in text and "wyrd" not in text


def test_a_url_parse_error_is_passed_on_without_the_password():
    with pytest.raises(ConfigurationError) as caught:
        parse_url("postgresql://celery:hunter2@db:notaport/x")
    text = str(caught.value)
    assert "master_database_url" in text and "notaport" in text, "the diagnostic stays"
    assert "hunter2" not in text


def test_redact_cuts_every_form_of_the_secret_and_keeps_the_rest():
    from celery_master.redact import redact, url_secrets

    secrets = url_secrets("postgresql://celery:p%40ss%20w0rd@db/x")
    text = "auth failed for 'p@ss w0rd' (p%40ss%20w0rd, p%40ss+w0rd) at db"
    assert redact(text, secrets) == "auth failed for '***' (***, ***) at db"
    assert redact("user pw: pw, pwd", url_secrets("postgresql://u:pw@db/x")) == (
        "user ***: ***, pwd"
    ), "a short password is cut only where it stands alone"


def test_a_driver_error_in_the_election_never_shows_the_password(caplog):
    settings = JobSettings(0.01, 0.1, 0.1, 2)
    store = LeaseStore(create_lease_engine(DSN_URL, timeout=0.5))
    elector = Elector(store, [(MasterJob("JOB", lambda ctx: None), settings)], Holder("n"))
    with caplog.at_level(logging.WARNING, logger="celery_master"):
        elector.start()
        try:
            error = wait_for(lambda: elector.snapshot()["JOB"]["last_error"], 10, "an error")
        finally:
            elector.stop(timeout=3)
    assert "invalid percent-encoded token" in error, "the diagnostic stays"
    assert DSN_SECRET not in error and DSN_SECRET not in caplog.text, caplog.text


def test_a_cli_database_error_is_one_line_without_the_password():
    for args in (("status",), ("status", "--check"), ("enable", "JOB")):
        done = run_master(DSN_URL, *args)
        assert done.code != 0
        assert "invalid percent-encoded token" in done.output, done.output
        assert DSN_SECRET not in done.output, done.output
