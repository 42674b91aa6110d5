"""Serving runtime: the ONNX cell engine, state stores, micro-batcher, server, batch scoring.

Never imports torch; numpy and onnxruntime only (uvicorn for the server).
"""

from recblr.runtime.engine import Engine, Event, Recs
from recblr.runtime.errors import RuntimeUserError
from recblr.runtime.store import MemoryStore, SQLiteStore, StateStore, UserState, open_store

__all__ = [
    "Engine",
    "Event",
    "MemoryStore",
    "Recs",
    "RuntimeUserError",
    "SQLiteStore",
    "StateStore",
    "UserState",
    "create_app",
    "open_store",
    "score_histories",
]


def __getattr__(name):  # lazy: the server and scoring pull in uvicorn / rich
    if name == "create_app":
        from recblr.runtime.server import create_app

        return create_app
    if name == "score_histories":
        from recblr.runtime import score

        return getattr(score, name)
    raise AttributeError(name)
