"""uvicorn's httptools HTTP/1.1 protocol, with each response leaving in one write.

uvicorn writes a response's status line and headers as soon as the app sends
`http.response.start`, and the body on `http.response.body`: two `send` syscalls per response,
and uvloop holds the GIL through each. Under micro-batching the server process is bound by its
GIL, and profiled, those two writes were a quarter of its GIL-held time. Here the writes made in
one event-loop step are held and handed to the transport together at the end of the step
(`loop.call_soon`), so a small response costs one syscall. Order is kept; what is held is handed
over early when it passes 64 KiB (so flow control still sees large bodies), before `close()` or
`write_eof()`, and when the peer half-closes; it is discarded only when the connection is already
gone, where the transport would discard it too.

Graceful shutdown: uvicorn lets a request in progress run until `timeout_graceful_shutdown` and
then cancels it. A request still reading its body would hold the drain for that long (or its
own body timeout) for nothing, so `shutdown` calls the hook the app left in the request's scope
(`server.SHUTDOWN_HOOK`): the app cuts that read off and answers 503 at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from recblr.runtime.server import SHUTDOWN_HOOK

FLUSH_BYTES = 64 * 1024  # hand over at once from here: flow control must see large bodies


class CoalescingTransport:
    """A transport proxy that joins the writes of one loop step into one."""

    __slots__ = ("_transport", "_loop", "_held", "_held_bytes")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None
        self._held_bytes = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._held is None:
            self._held = [data]
            self._loop.call_soon(self.flush)
        else:
            self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= FLUSH_BYTES:
            self.flush()

    def writelines(self, chunks) -> None:
        for c in chunks:
            self.write(c)

    def flush(self) -> None:
        """Hand what is held to the real transport (idempotent). A transport that is already
        closing would drop it (and uvloop's would raise after the connection is lost)."""
        held, self._held = self._held, None
        self._held_bytes = 0
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def discard(self) -> None:
        """The connection is gone: nothing held can be sent."""
        self._held, self._held_bytes = None, 0

    def get_write_buffer_size(self) -> int:
        return self._held_bytes + self._transport.get_write_buffer_size()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self.discard()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else: the real transport
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=CoalescingHttpToolsProtocol)`: httptools, one write per response."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def eof_received(self) -> None:
        # The peer half-closed; the transport closes after this returns, so what is held (a
        # response written just before) goes out now, as it would have without holding.
        self.transport.flush()  # type: ignore[attr-defined]
        return super().eof_received()

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            hook = cycle.scope.get(SHUTDOWN_HOOK)
            if hook is not None:
                hook()  # a no-op unless the request is still reading its body
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport.discard()  # type: ignore[attr-defined]
        super().connection_lost(exc)
