"""The filesystem transport of the embedded default never hands out a partial file."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from kombu import Connection

from celery_master.transport import FilesystemTransport

N = 400


def options(folder: Path) -> dict:
    return {
        "data_folder_in": str(folder / "in"),
        "data_folder_out": str(folder / "in"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }


def channel(folder: Path):
    conn = Connection(transport=FilesystemTransport, transport_options=options(folder))
    return conn, conn.default_channel


def write_many(folder: str, tag: int) -> None:
    conn, chan = channel(Path(folder))
    for i in range(N):
        chan._put("q", {"tag": tag, "i": i, "pad": "x" * 2000})
    conn.release()


def bind_one(folder: str, index: int) -> None:
    conn, chan = channel(Path(folder))
    chan._queue_bind("fan", "", "", f"queue-{index}")
    conn.release()


def test_readers_never_see_a_message_being_written(tmp_path):
    (tmp_path / "in").mkdir()
    writers = [
        multiprocessing.Process(target=write_many, args=(str(tmp_path), t)) for t in range(2)
    ]
    for w in writers:
        w.start()
    conn, chan = channel(tmp_path)
    got: list[dict] = []
    while len(got) < 2 * N:
        try:
            got.append(chan._get("q"))  # a partial file would raise JSONDecodeError here
        except Exception as exc:  # Empty between writes
            assert type(exc).__name__ == "Empty", repr(exc)
            if not any(w.is_alive() for w in writers) and not os.listdir(tmp_path / "in"):
                break
    for w in writers:
        w.join()
    assert sorted((m["tag"], m["i"]) for m in got) == [(t, i) for t in range(2) for i in range(N)]
    conn.release()


def test_concurrent_bindings_all_survive(tmp_path):
    (tmp_path / "in").mkdir()
    procs = [multiprocessing.Process(target=bind_one, args=(str(tmp_path), i)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    conn, chan = channel(tmp_path)
    assert sorted(q.queue for q in chan.get_table("fan")) == sorted(f"queue-{i}" for i in range(8))
    chan._delete("queue-3", "fan", "", "")
    assert "queue-3" not in {q.queue for q in chan.get_table("fan")}
    conn.release()
