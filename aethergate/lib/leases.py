"""Concurrency leases: at most N requests of a scope (a key, a model) in flight at once.

A lease is taken before a request goes upstream and given back in its
`finally`, whatever ended it. With Redis, the leases of every process are in
one sorted set per scope (member: lease id, score: expiry); each process
renews its own leases every third of AETHERGATE_LEASE_SECONDS, so the leases
of a process that crashed expire within that time instead of locking the
key out. Without Redis (or while it is unreachable) they are counted in the
process, which gives them back itself.
"""

import itertools
import secrets
from dataclasses import dataclass, field

from aethergate.lib import metrics
from aethergate.lib.ratelimit import LUA_NOW

# Takes a lease in every scope or in none. KEYS: one sorted set per scope;
# ARGV: now (empty: the server's clock), seconds a lease lives, the lease id,
# then each scope's limit. Returns {1} or {0, index of the full scope}.
_ACQUIRE = (
    LUA_NOW
    + """
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[3 + i]) then return {0, i} end
end
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[i], math.ceil(ttl * 1000))
end
return {1}
"""
)

# Renews leases that still exist. KEYS: sorted sets; ARGV: now, seconds, then
# the lease id for each key.
_RENEW = (
    LUA_NOW
    + """
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  if redis.call('ZADD', KEYS[i], 'XX', 'CH', now + ttl, ARGV[2 + i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], math.ceil(ttl * 1000))
  end
end
return 0
"""
)

# Counts the live leases of KEYS[1] (ARGV[1]: now, empty for the server's clock).
_COUNT = (
    LUA_NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)

_RELEASE = """
for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 0
"""


@dataclass(slots=True, eq=False)
class Lease:
    """The slots one request holds: `scopes`, in Redis (`shared`) or in this process."""

    id: str
    scopes: tuple[str, ...]
    shared: bool
    released: bool = field(default=False)


class Leases:
    """Takes and gives back leases; shared through `shared` (a SharedRedis) when given.

    `acquire` returns a Lease, or the index of the scope that is full.
    """

    def __init__(self, shared=None, *, prefix: str = "aethergate", seconds: float = 60.0):
        self.shared = shared
        self.seconds = seconds
        self.prefix = f"{prefix}:cc:"
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(6)
        self.local: dict[str, int] = {}  # scope -> leases held in this process
        self.live: dict[str, Lease] = {}  # this process's Redis leases, to renew
        if shared is not None:
            self._acquire = shared.redis.register_script(_ACQUIRE)
            self._renew = shared.redis.register_script(_RENEW)
            self._release = shared.redis.register_script(_RELEASE)
            self._count = shared.redis.register_script(_COUNT)

    async def acquire(self, wanted: list[tuple[str, int]]) -> Lease | int:
        """A lease in every (scope, limit) of `wanted`, or the index of one that is full."""
        lease_id = f"{self._id_prefix}{next(self._ids):x}"
        scopes = tuple(scope for scope, _ in wanted)
        if self.shared is not None and not self.shared.down():
            reply = await self.shared.run(
                self._acquire,
                [self.prefix + scope for scope in scopes],
                [self.shared.now(), self.seconds, lease_id, *(limit for _, limit in wanted)],
                "concurrency limits",
            )
            if reply is not None:
                if not reply[0]:
                    return reply[1] - 1
                lease = self.live[lease_id] = Lease(lease_id, scopes, True)
                return lease
        for i, (scope, limit) in enumerate(wanted):
            if self.local.get(scope, 0) >= limit:
                return i
        for scope in scopes:
            self.local[scope] = self.local.get(scope, 0) + 1
        metrics.LEASES_LOCAL.inc()
        return Lease(lease_id, scopes, False)

    async def release(self, lease: Lease) -> None:
        """Give `lease` back (once; a second call does nothing)."""
        if lease.released:
            return
        lease.released = True
        if not lease.shared:
            metrics.LEASES_LOCAL.dec()
            for scope in lease.scopes:
                left = self.local[scope] - 1
                if left:
                    self.local[scope] = left
                else:
                    del self.local[scope]
            return
        del self.live[lease.id]
        # Unreachable Redis: the lease expires there on its own, unrenewed.
        await self.shared.run(
            self._release,
            [self.prefix + scope for scope in lease.scopes],
            [lease.id],
            "concurrency limits",
        )

    async def renew(self) -> None:
        """Push back the expiry of every Redis lease this process holds."""
        if not self.live or self.shared.down():
            return
        keys, ids = [], []
        for lease in self.live.values():
            for scope in lease.scopes:
                keys.append(self.prefix + scope)
                ids.append(lease.id)
        await self.shared.run(
            self._renew, keys, [self.shared.now(), self.seconds, *ids], "concurrency limits"
        )

    async def in_use(self, scope: str) -> int:
        """Leases held now in `scope`: across processes with Redis, else in this one."""
        if self.shared is not None and not self.shared.down():
            found = await self.shared.run(
                self._count, [self.prefix + scope], [self.shared.now()], "concurrency limits"
            )
            if found is not None:
                return found
        return self.local.get(scope, 0)
