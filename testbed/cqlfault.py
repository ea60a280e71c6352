"""Server errors in front of a real node: what neither Cassandra nor toxiproxy
can produce on demand.

``CqlFaultProxy`` forwards a CQL native protocol v4 connection (the scylla
driver's) to a real node and replaces a chosen fraction of the responses to
EXECUTE requests with an error response the node could have sent:
``overloaded`` (0x1001) or ``read_timeout`` (0x1200). Everything else passes
through untouched, so the client sees a real Cassandra that sometimes fails.
It runs on its own thread; frames of other protocol versions pass through
unchanged (and are counted, so a test can tell it injected nothing).
"""

from __future__ import annotations

import asyncio
import random
import struct
import threading
from typing import Any

from .cassandra import free_port

EXECUTE = 0x0A
ERROR = 0x00
HEADER = struct.Struct(">BBhBi")  # version, flags, stream, opcode, body length


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def error_body(kind: str) -> bytes:
    if kind == "overloaded":
        return struct.pack(">i", 0x1001) + _string("Server is in overloaded state (injected)")
    if kind == "read_timeout":
        # consistency LOCAL_ONE (0x000A), received 0, blockfor 1, data_present 0
        return (
            struct.pack(">i", 0x1200)
            + _string("Operation timed out - received only 0 responses (injected)")
            + struct.pack(">Hiib", 0x000A, 0, 1, 0)
        )
    raise ValueError(f"unknown error kind {kind!r}")


class CqlFaultProxy:
    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1", seed: int = 0):
        self.upstream = upstream
        self.host = host
        self.port = free_port(host)
        self.error_rate = 0.0
        self.error_kind = "overloaded"
        self.injected = 0
        self.other_versions = 0
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._run, name="cqlfault", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("CQL fault proxy did not start")

    def set_errors(self, rate: float, kind: str = "overloaded") -> None:
        error_body(kind)  # validates the kind
        self.error_rate, self.error_kind = rate, kind

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._client, self.host, self.port)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _client(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection(*self.upstream)
        except OSError:
            cwriter.close()
            return
        executes: set[int] = set()  # streams whose request was an EXECUTE
        lock = asyncio.Lock()  # one writer of frames to the client at a time

        async def upstream() -> None:
            while True:
                header, body = await _frame(creader)
                version, _, stream, opcode, _ = HEADER.unpack(header)
                if version & 0x7F == 4 and opcode == EXECUTE:
                    executes.add(stream)
                swriter.write(header + body)
                await swriter.drain()

        async def downstream() -> None:
            while True:
                header, body = await _frame(sreader)
                version, flags, stream, opcode, _ = HEADER.unpack(header)
                if version & 0x7F != 4:
                    self.other_versions += 1
                elif stream in executes:
                    executes.discard(stream)
                    if self._rng.random() < self.error_rate:
                        self.injected += 1
                        err = error_body(self.error_kind)
                        header = HEADER.pack(version, 0, stream, ERROR, len(err))
                        body = err
                async with lock:
                    cwriter.write(header + body)
                    await cwriter.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (cwriter, swriter):
                w.close()

    def stop(self) -> None:
        def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.stop()

        if self._loop.is_running():
            self._loop.call_soon_threadsafe(close)
            self._thread.join(10)

    def __enter__(self) -> CqlFaultProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


async def _frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(HEADER.size)
    length = HEADER.unpack(header)[4]
    return header, await reader.readexactly(length)
