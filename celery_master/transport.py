"""kombu's filesystem transport, with its file races closed: the embedded default's broker.

kombu 5.7's filesystem transport creates a message file, then writes it, and a
reader on another process can move and read it in between: it gets an empty
payload and the worker dies with ``Unrecoverable error: JSONDecodeError``. Its
exchange (binding) files have the same window when workers boot together. This
subclass writes every file under a temporary name and renames it into place,
so readers only ever see whole files, serialises binding updates with a
lock file, and creates its folders when a connection first opens a channel.
Use it with ``broker_url = "filesystem://"`` and
``broker_transport = "celery_master.transport:FilesystemTransport"``.

It relies on kombu internals that exist from kombu 5.3.0 on (``Channel`` with
``control_folder``, ``exchange_queue_t``, ``lock``/``unlock``); kombu 5.7 added
``Channel._exchange_file``, which checks exchange names, and older kombu gets
the same check here, so the package's ``kombu>=5.3`` floor is true.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

__all__ = ["FilesystemChannel", "FilesystemTransport"]


def _write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader sees a partial file."""
    tmp = path.parent / f".{uuid.uuid4().hex}.tmp"  # never matches '<ts>_<id>.<queue>.msg'
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


_EXCHANGE_NAME = re.compile(r"\A[A-Za-z0-9._-]*\Z")  # kombu 5.7's rule; "" is the default


class FilesystemChannel(filesystem.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Create the broker folders on first use, so an app module need not at import."""
        super().__init__(*args, **kwargs)
        for folder in {self.data_folder_in, self.data_folder_out, self.control_folder}:
            Path(folder).mkdir(parents=True, exist_ok=True)

    if not hasattr(filesystem.Channel, "_exchange_file"):  # kombu < 5.7

        def _exchange_file(self, exchange: str) -> Path:
            """The exchange's binding file; a name that could leave the folder is refused."""
            folder = Path(self.control_folder)
            file = folder / f"{exchange}.exchange"
            bad = not isinstance(exchange, str) or not _EXCHANGE_NAME.match(exchange)
            if bad or (exchange and not exchange.strip(".")) or file.parent != folder:
                raise filesystem.ChannelError(f"Invalid exchange name: {exchange!r}")
            return file

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        try:
            _write_whole(Path(self.data_folder_out) / name, str_to_bytes(dumps(payload)))
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {name!r} to directory") from exc

    def get_table(self, exchange: str) -> list[Any]:
        file = self._exchange_file(exchange)
        try:
            text = bytes_to_str(file.read_bytes())
        except FileNotFoundError:
            return []
        return [filesystem.exchange_queue_t(*q) for q in (loads(text) if text else [])]

    def _update_table(self, exchange: str, change: Any) -> None:
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(parents=True, exist_ok=True)
        with open(self.control_folder / f".{exchange}.lock", "a+b") as guard:
            filesystem.lock(guard, filesystem.LOCK_EX)
            try:
                queues = self.get_table(exchange)
                updated = change(list(queues))
                if updated != queues:
                    _write_whole(file, str_to_bytes(dumps(updated)))
            finally:
                filesystem.unlock(guard)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        value = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda qs: qs if value in qs else [value, *qs])

    def _delete(
        self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any
    ) -> None:
        filesystem.virtual.Channel._delete(
            self, queue, exchange, routing_key, pattern, *args, **kwargs
        )
        value = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda qs: [q for q in qs if q != value])


class FilesystemTransport(filesystem.Transport):
    Channel = FilesystemChannel
