"""The test servers prove they are ours, survive a taken port, and leave nothing behind."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from unittest import mock

import pytest

from tests.support import servers
from tests.support.servers import PgServer, RedisServer, ServerStartError


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port someone else listens on, as if taken between free_port() and the bind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def handing_out(*ports: int):  # type: ignore[no-untyped-def]
    """free_port() answers these ports in turn, then real free ones."""
    queue = list(ports)
    real = servers.free_port
    return mock.patch.object(servers, "free_port", lambda: queue.pop(0) if queue else real())


def recording_folders(made: list[str]):  # type: ignore[no-untyped-def]
    """Records the folders the servers create (others' servers may run meanwhile)."""
    real = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(real(*args, **kwargs))
        return made[-1]

    return mock.patch.object(servers.tempfile, "mkdtemp", mkdtemp)


def test_redis_moves_to_a_new_port_when_its_port_was_taken(taken_port, redis_server):
    with handing_out(taken_port, redis_server.port):  # a socket, then another Redis
        server = RedisServer()
    try:
        assert server.port not in (taken_port, redis_server.port)
        assert server.proc is not None and server._info()["process_id"] == server.proc.pid
    finally:
        server.close()
    assert not os.path.exists(server.dir)


def test_postgresql_moves_to_a_new_port_and_a_failed_start_leaks_nothing(taken_port):
    with handing_out(taken_port):
        server = PgServer()
    try:
        assert server.port != taken_port
        assert int((server.data / "postmaster.pid").read_text().split()[3]) == server.port
    finally:
        server.close()
    made: list[str] = []
    with (
        recording_folders(made),
        pytest.raises(ServerStartError, match="unrecognized configuration parameter"),
    ):
        PgServer(extra="-c no_such_setting=1")  # the log tail names the mistake
    assert made and not any(os.path.exists(d) for d in made), "a failed start left a folder"


def test_tests_never_inherit_celery_settings_from_the_shell():
    leaked = [k for k in os.environ if k.startswith(("CELERY_", "JOURNAL_", "FAKETIME"))]
    assert leaked == []
