"""JSON in and out of the runtime: one codec for HTTP bodies, NDJSON lines and jsonl files.

orjson rather than the standard library: encoding one answer (20 ids and 20 scores) takes
about 1 µs instead of 13 µs, and at thousands of events per second on one event-loop thread
that is a tenth of the server's CPU. Output is compact UTF-8. JSON has no NaN or infinity:
orjson writes them as null; the engine never lets a non-finite score reach an answer.
"""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError  # a ValueError


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return orjson.dumps(obj)


def dumps_line(obj: Any) -> str:
    """One JSON line (with its newline) for a text stream."""
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE).decode()


def loads(raw: bytes | str) -> Any:
    """Parse a JSON document; JSONDecodeError (a ValueError) when it is not one."""
    return orjson.loads(raw)
