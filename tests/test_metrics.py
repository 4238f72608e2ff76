"""Prometheus metrics: scraped from real workers, and the pieces a worker step wires."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import urllib.request

import pytest
from celery import signals
from prometheus_client.parser import text_string_to_metric_families

from celery_master.errors import ConfigurationError
from celery_master.worker.metrics import MasterMetrics, metrics_port, reason_label
from tests.support.cluster import FAST_TIMING, wait_for
from tests.support.servers import free_port

LOCK = "JOB-SCHEDULER"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_of_real_workers_show_the_master_and_move_after_a_kill_9_failover(
    make_cluster, pg_url
):
    cluster = make_cluster(pg_url, **FAST_TIMING)
    ports = {}
    for name in ("w1", "w2"):
        ports[name] = free_port()
        cluster.env["CELERY_MASTER_METRICS_PORT"] = str(ports[name])
        cluster.start_worker(name)
    master_pid = wait_for(cluster.master_pid, 15, "a master")
    master = cluster.worker(master_pid)
    standby = next(w for w in cluster.workers if w.pid != master_pid)

    def both_scraped():
        try:
            found = {w.name: scrape(ports[w.name]) for w in (master, standby)}
        except OSError:
            return None
        roles = [
            value(found[w.name], "celery_master_is_master", lock_name=LOCK)
            for w in (master, standby)
        ]
        # every round trip of the election is timed (on_tick): both have made one by now
        timed = all(value(found[n], "celery_master_renewal_seconds_count") for n in found)
        return found if roles == [1.0, 0.0] and timed else None

    found = wait_for(both_scraped, 15, "is_master 1 on the master and 0 on the standby", 0.2)
    assert value(found[master.name], "celery_master_elections_total", lock_name=LOCK) == 1.0
    assert value(found[master.name], "celery_master_epoch", lock_name=LOCK) is not None
    assert value(found[master.name], "celery_master_lease_remaining_seconds", lock_name=LOCK) > 0
    assert value(found[standby.name], "celery_master_lease_remaining_seconds", lock_name=LOCK) == 0
    before = value(found[standby.name], "celery_master_elections_total", lock_name=LOCK) or 0.0

    killed_at = cluster.signal(master_pid, signal.SIGKILL)
    bound = cluster.ttl + cluster.setting("check_interval", 1.0) + 1.0 + 5.0  # + a stall, + boot
    cluster.wait_new_start(killed_at, bound, exclude_pid=master_pid)

    def elected_again():
        samples = scrape(ports[standby.name])
        if value(samples, "celery_master_is_master", lock_name=LOCK) != 1.0:
            return None
        return samples

    after = wait_for(elected_again, 10, "the survivor's metrics to show it master", 0.2)
    assert value(after, "celery_master_elections_total", lock_name=LOCK) == before + 1
    epoch_before = value(found[master.name], "celery_master_epoch", lock_name=LOCK)
    assert value(after, "celery_master_epoch", lock_name=LOCK) > epoch_before


def test_beat_sends_of_a_real_ha_beat_are_counted_on_its_master(make_cluster, pg_url):
    cluster = make_cluster(pg_url, locks="", **FAST_TIMING)
    cluster.env["CELERY_MASTER_BEAT"] = "1"
    cluster.env["JOURNAL_BEAT_PERIOD"] = "0.5"
    port = free_port()
    cluster.env["CELERY_MASTER_METRICS_PORT"] = str(port)
    cluster.start_worker("w1")
    beat = "celery-beat:journal_app"

    def sends() -> float | None:
        try:
            samples = scrape(port)
        except OSError:
            return None
        count = value(samples, "celery_master_beat_sends_total", lock_name=beat)
        return count if count and count >= 2 else None

    wait_for(sends, 20, "two beat sends counted", 0.2)
    sent = len(cluster.journal.events("send"))
    assert sent >= 2, "the journal saw the sends the metric counted"


def test_step_downs_and_ticks_are_counted_by_kind_of_reason():
    metrics = MasterMetrics()
    metrics.role_changed(LOCK, "master", 1, "elected")
    metrics.role_changed(LOCK, "standby", 1, "3 renewals failed in a row")
    metrics.role_changed(LOCK, "standby", 2, "spread: handing over to a less loaded worker")
    metrics.tick(0.004, True)
    metrics.tick(1.0, False)
    get = metrics.registry.get_sample_value
    assert get("celery_master_elections_total", {"lock_name": LOCK}) == 1
    assert get(
        "celery_master_step_downs_total", {"lock_name": LOCK, "reason": "renewals failed in a row"}
    )
    assert get("celery_master_step_downs_total", {"lock_name": LOCK, "reason": "spread"}) == 1
    assert get("celery_master_renewal_seconds_count") == 1
    assert get("celery_master_renewal_failures_total") == 1
    assert reason_label("lease lost: another worker holds a newer epoch") == "lease lost"


def test_beat_sends_are_counted_from_task_headers_and_other_sends_are_not():
    metrics = MasterMetrics()
    port = free_port()
    assert metrics.start(port, "127.0.0.1")
    try:
        signals.before_task_publish.send(
            sender="app.tick", headers={"celery_master_lock_name": "celery-beat:app"}
        )
        signals.before_task_publish.send(sender="app.other", headers={"id": "x"})
        samples = scrape(port)
        assert value(samples, "celery_master_beat_sends_total", lock_name="celery-beat:app") == 1
        sends = {k: v for k, v in samples.items() if k[0] == "celery_master_beat_sends_total"}
        assert sum(sends.values()) == 1, sends
    finally:
        metrics.stop()


def test_a_taken_port_is_one_log_line_and_the_worker_goes_on(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = MasterMetrics()
        with caplog.at_level(logging.ERROR, logger="celery_master.worker.metrics"):
            assert metrics.start(port, "127.0.0.1") is False
        metrics.stop()
    lines = [r for r in caplog.records if r.name == "celery_master.worker.metrics"]
    assert len(lines) == 1 and "master_metrics_port" in lines[0].getMessage()


def test_metrics_port_is_off_by_default_and_a_bad_one_names_the_setting():
    assert metrics_port({}, environ={}) is None
    assert metrics_port({"master_metrics_port": 9100}, environ={}) == 9100
    assert metrics_port({}, environ={"CELERY_MASTER_METRICS_PORT": "9200"}) == 9200
    with pytest.raises(ConfigurationError, match="CELERY_MASTER_METRICS_PORT"):
        metrics_port({}, environ={"CELERY_MASTER_METRICS_PORT": "http"})
    with pytest.raises(ConfigurationError, match="master_metrics_port"):
        metrics_port({"master_metrics_port": 70000}, environ={})


def test_idle_connections_cannot_exhaust_the_worker_and_a_real_scrape_still_answers():
    """500 idle (and half-sent) connections once made 500 threads in the worker's main
    process, held for ever. Now: no thread per connection, a bounded number held open, each
    closed when its request does not arrive in time; a real scrape answers meanwhile."""
    metrics = MasterMetrics()
    port = free_port()
    assert metrics.start(port, "127.0.0.1")
    before = threading.active_count()
    idle: list[socket.socket] = []
    try:
        for n in range(500):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            if n % 2:
                idle[-1].sendall(b"GET /metr")  # a request that never ends
        assert scrape(port) is not None  # accepted after every idle one: they were all taken
        assert threading.active_count() <= before, "a thread per connection"

        def closed_by_the_server(sock: socket.socket) -> bool:
            sock.setblocking(False)
            try:
                return sock.recv(1) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True

        from celery_master.worker.scrape import REQUEST_SECONDS

        bound = REQUEST_SECONDS + 5.0  # the deadline, and a stalled machine
        wait_for(lambda: all(closed_by_the_server(s) for s in idle), bound, "idle ones closed")
    finally:
        for sock in idle:
            sock.close()
        metrics.stop()


def test_metrics_listen_on_every_interface_unless_master_metrics_address_narrows_it():
    from celery_master.worker.metrics import metrics_address

    assert metrics_address({}, environ={}) == "0.0.0.0"
    assert metrics_address({"master_metrics_address": "127.0.0.1"}, environ={}) == "127.0.0.1"
    env = {"CELERY_MASTER_METRICS_ADDRESS": "::1"}
    assert metrics_address({"master_metrics_address": "10.0.0.1"}, environ=env) == "::1"
