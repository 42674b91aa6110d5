"""One write per response: the coalescing transport under uvicorn's httptools protocol."""

import asyncio

from recblr.runtime.httpproto import CoalescingTransport


class RecordingTransport:
    def __init__(self):
        self.calls = []
        self.extra = {"peername": ("127.0.0.1", 5)}

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
