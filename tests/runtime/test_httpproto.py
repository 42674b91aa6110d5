"""One write per response: the coalescing transport under uvicorn's httptools protocol."""

import asyncio
import socket
import threading
import time

import pytest

from recblr.runtime.httpproto import FLUSH_BYTES, CoalescingHttpToolsProtocol, CoalescingTransport


class RecordingTransport:
    def __init__(self):
        self.calls = []
        self.extra = {"peername": ("127.0.0.1", 5)}
        self.closing = False

    def is_closing(self):
        return self.closing

    def write(self, data):
        self.calls.append(("write", bytes(data)))

    def close(self):
        self.calls.append(("close",))

    def abort(self):
        self.calls.append(("abort",))

    def write_eof(self):
        self.calls.append(("eof",))

    def get_write_buffer_size(self):
        return 0

    def get_extra_info(self, name, default=None):
        return self.extra.get(name, default)


def test_writes_of_one_step_leave_together_and_in_order():
    async def main():
        real = RecordingTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        t.write(b"{}")
        assert real.calls == [] and t.get_write_buffer_size() == 40
        await asyncio.sleep(0)  # the end of this step
        assert real.calls == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")]
        t.write(b"next")
        await asyncio.sleep(0)
        assert real.calls[-1] == ("write", b"next") and t.get_write_buffer_size() == 0
        t.write(b"")  # nothing to send schedules nothing
        await asyncio.sleep(0)
        assert len(real.calls) == 2

    asyncio.run(main())


def test_close_and_eof_flush_first_abort_drops():
    async def main():
        loop = asyncio.get_running_loop()
        real = RecordingTransport()
        t = CoalescingTransport(real, loop)
        t.writelines([b"a", b"b"])
        t.close()
        assert real.calls == [("write", b"ab"), ("close",)]
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        assert real.calls == [("write", b"ab"), ("close",)]

        real = RecordingTransport()
        t = CoalescingTransport(real, loop)
        t.write(b"x")
        t.write_eof()
        assert real.calls == [("write", b"x"), ("eof",)]

        real = RecordingTransport()
        t = CoalescingTransport(real, loop)
        t.write(b"lost")
        t.abort()
        await asyncio.sleep(0)
        assert real.calls == [("abort",)]

    asyncio.run(main())


def test_other_calls_reach_the_real_transport():
    async def main():
        real = RecordingTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())
        assert t.get_extra_info("peername") == ("127.0.0.1", 5)

    asyncio.run(main())


def test_large_writes_go_out_at_once_and_nothing_is_written_to_a_closing_transport():
    async def main():
        real = RecordingTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())
        t.write(b"h")
        t.write(b"x" * FLUSH_BYTES)  # flow control must see it now, not a step later
        assert real.calls == [("write", b"h" + b"x" * FLUSH_BYTES)]
        t.write(b"late")
        real.closing = True  # the peer went away before the end of the step
        await asyncio.sleep(0)
        assert len(real.calls) == 1
        t.write(b"gone")
        t.discard()
        real.closing = False
        await asyncio.sleep(0)
        assert len(real.calls) == 1

    asyncio.run(main())


@pytest.fixture
def served():
    """A real uvicorn server (uvloop when installed) on the coalescing protocol."""
    uvicorn = pytest.importorskip("uvicorn")

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        body = scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            app, http=CoalescingHttpToolsProtocol, ws="none", lifespan="off", log_level="error"
        )
    )
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    yield sock.getsockname()[1]
    server.should_exit = True
    th.join(30)


def _read_response(c: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += c.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    n = int(
        next(
            v
            for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n"))
            if k.lower() == b"content-length"
        )
    )
    while len(body) < n:
        body += c.recv(65536)
    return head + b"\r\n\r\n" + body


def test_served_responses_leave_in_one_write_each(served, monkeypatch):
    writes = []
    real_flush = CoalescingTransport.flush

    def spy(self):
        if self._held:
            writes.append(b"".join(self._held))
        real_flush(self)

    monkeypatch.setattr(CoalescingTransport, "flush", spy)
    with socket.create_connection(("127.0.0.1", served)) as c:
        for path in ("/a", "/bb", "/ccc"):
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            resp = _read_response(c)
            assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(path.encode())
    assert len(writes) == 3
    for w, path in zip(writes, ("/a", "/bb", "/ccc"), strict=True):
        assert w.startswith(b"HTTP/1.1 200") and w.endswith(b"\r\n\r\n" + path.encode())


def test_a_half_closed_peer_still_gets_its_response(served):
    with socket.create_connection(("127.0.0.1", served)) as c:
        c.sendall(b"GET /half HTTP/1.1\r\nHost: x\r\n\r\n")
        c.shutdown(socket.SHUT_WR)
        c.settimeout(10)
        data = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"/half")
