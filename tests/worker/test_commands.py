"""One operator command, one effect: a late control statement never undoes a newer change."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from celery_master.election.elector import Elector
from celery_master.holder import Holder
from celery_master.jobs.job import MasterJob
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine
from celery_master.testing import wait_until
from celery_master.worker.broadcast import CLOCK_SKEW
from celery_master.worker.control import mastercontrol
from celery_master.worker.offload import Offload

LOCK = "JOB"


def test_a_disable_whose_statement_runs_after_a_later_enable_does_not_undo_it(sqlite_url):
    """Regression: the reply said the database did not answer, but the statement ran later,
    unconditionally, and undid the operator's enable (history: disabled, enabled, disabled)."""
    store = LeaseStore(create_lease_engine(sqlite_url))
    store.ensure_schema()
    store.ensure_rows([LOCK])
    elector = Elector(store, [(MasterJob(LOCK, lambda ctx: None), JobSettings())], Holder("t@h"))
    offload = Offload(store)
    controller = SimpleNamespace(master_elector=elector, master_offload=offload)
    state = SimpleNamespace(consumer=SimpleNamespace(steps=[], controller=controller))
    stuck = threading.Event()
    offload.submit(lambda _store: stuck.wait(30))  # the database is slow: the statement waits
    try:
        reply = mastercontrol(state, "disable", LOCK, "late")  # received now, applied later
        store.set_enabled(LOCK, False, "ops", "maintenance")  # `celery master disable`
        store.set_enabled(LOCK, True, "ops", None)  # `celery master enable`, after the receipt
    finally:
        stuck.set()
    offload.submit(lambda _store: None).result(10)  # one thread: the late statement ran first
    offload.shutdown()
    history = [h["event"] for h in store.history(LOCK)]
    assert store.read([LOCK])[LOCK].enabled, f"the late disable undid the enable: {history}"
    assert history == ["enabled", "disabled"], history
    assert "outcome not known yet" in reply["error"] and "celery master status" in reply["error"]


def state_of(sqlite_url):
    store = LeaseStore(create_lease_engine(sqlite_url))
    store.ensure_schema()
    elector = Elector(store, [(MasterJob(LOCK, lambda ctx: None), JobSettings())], Holder("t@h"))
    controller = SimpleNamespace(master_elector=elector, master_offload=Offload(store))
    return store, SimpleNamespace(consumer=SimpleNamespace(steps=[], controller=controller))


def test_a_broadcast_never_creates_rows_for_names_nobody_runs(sqlite_url):
    """Regression: `mastercontrol disable <any name>` created a row per junk name, uncapped."""
    store, state = state_of(sqlite_url)
    for n in range(3):
        reply = mastercontrol(state, "disable", f"junk-{n}-" + "x" * 150, "junk")
        assert "unknown lock name" in reply["error"] and "celery master disable" in reply["error"]
    assert set(store.read()) <= {LOCK}, sorted(store.read())
    store.set_enabled("ROW-ONLY", True, "ops", None)  # an operator recorded it: it may be steered
    assert mastercontrol(state, "disable", "ROW-ONLY", "planned")["ok"]["enabled"] is False


def test_replies_never_echo_more_than_a_lock_name(sqlite_url):
    _, state = state_of(sqlite_url)
    huge = "L" * 1_000_000
    for reply in (
        mastercontrol(state, "status", huge),
        mastercontrol(state, huge, LOCK),
        mastercontrol(state, "disable", huge),
    ):
        assert "error" in reply and len(reply["error"]) < 1000, len(str(reply))


def late_broadcast(state, seconds_late: float):
    """The consumer step's view of a broadcast read ``seconds_late`` after its kombu expires."""
    from celery.worker.consumer.control import Control

    from celery_master.worker.broadcast import Broadcasts

    control = Control.__new__(Control)  # the step object alone: its pidbox consumer's callbacks
    control.box = SimpleNamespace(consumer=SimpleNamespace(callbacks=[]))
    state.consumer.steps = [control]
    broadcasts = state.consumer.master_broadcasts = Broadcasts(state.consumer)
    broadcasts.attach()
    message = SimpleNamespace(headers={"expires": time.time() - seconds_late})
    broadcasts.on_message({}, message)


def test_a_sender_supplied_time_never_widens_what_is_accepted(sqlite_url):
    """Regression: an hour-late disable carrying issued_at=1e18 and who="ops" was applied and
    recorded as changed_by=ops; nothing in the package sends issued_at."""
    store, state = state_of(sqlite_url)
    store.ensure_rows([LOCK])
    late_broadcast(state, 3600)
    reply = mastercontrol(state, "disable", LOCK, "late", issued_at=1e18, who="ops")
    assert "refused" in reply.get("error", ""), reply
    assert store.read([LOCK])[LOCK].enabled and store.history(LOCK) == []


def test_expires_within_the_allowed_clock_skew_is_not_late(sqlite_url):
    store, state = state_of(sqlite_url)
    store.ensure_rows([LOCK])
    late_broadcast(state, CLOCK_SKEW / 2)  # the sender's clock may run ahead of this worker's
    reply = mastercontrol(state, "disable", LOCK, "on time")
    assert "refused" not in str(reply), reply
    wait_until(lambda: not store.read([LOCK])[LOCK].enabled, 10, "the disable to be applied")
