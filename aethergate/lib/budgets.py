"""Spend budgets: what each budget has spent this period and what requests in flight reserve.

A request reserves what it may cost in each of its budgets before it goes
upstream, and is refused if that would take one past its hard limit:
admitted only while `spent + reserved + its reservation <= hard limit`. When
it ends, its reservation is replaced by what it cost. So the hard limit is
passed only by what admitted requests cost beyond what they reserved (their
input estimated short, or an answer longer than its output cap); with every
reservation an upper bound, never.

With Redis, every process shares one hash per budget and period (`spent`,
`reserved`, and each reservation, `r:<id>`) plus a sorted set of reservation
expiries: a crashed process's reservations expire unless it renews them.
Amounts are kept as integers of 10**-10 (the MONEY columns' resolution).
A budget's hash is seeded, the first time it is used in a period, with the
spend the caller read from the database, and raised to it whenever the
database knows of more (what was settled while Redis was unreachable).
Without Redis, budgets are kept in the process: spent is what the caller
passes (the database's, plus this process's charges not yet stored),
reserved this process's reservations.
"""

import itertools
import secrets
from dataclasses import dataclass
from decimal import Decimal

from redis.exceptions import RedisError

from aethergate.lib.ratelimit import LUA_NOW

SCALE = Decimal(10) ** 10  # amounts in Redis are integers of 1/SCALE

# KEYS: one hash per budget; ARGV: now (empty: the server's clock), seconds a
# reservation lives, seconds a hash lives, the reservation id, the amount,
# then per budget its hard limit ("" for none) and the spend the database knows of
# (the seed of a new hash, and the least its spent may be).
# Returns {1} or {0, index, spent, reserved} of the budget that refused.
_RESERVE = (
    LUA_NOW
    + """
local ttl, keep, id, amount = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
for i = 1, #KEYS do
  local h, z = KEYS[i], KEYS[i] .. ':r'
  if redis.call('EXISTS', h) == 0 then
    redis.call('HSET', h, 'spent', ARGV[5 + 2 * i], 'reserved', 0)
    redis.call('EXPIRE', h, keep)
  end
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now)) do
    local held = redis.call('HGET', h, 'r:' .. gone)
    if held then
      redis.call('HINCRBY', h, 'reserved', string.format('%d', -tonumber(held)))
      redis.call('HDEL', h, 'r:' .. gone)
    end
    redis.call('ZREM', z, gone)
  end
  local hard = tonumber(ARGV[4 + 2 * i])
  local spent = tonumber(redis.call('HGET', h, 'spent'))
  if tonumber(ARGV[5 + 2 * i]) > spent then
    -- The database knows of more (spend settled while Redis was unreachable).
    spent = tonumber(ARGV[5 + 2 * i])
    redis.call('HSET', h, 'spent', ARGV[5 + 2 * i])
  end
  local reserved = tonumber(redis.call('HGET', h, 'reserved'))
  if hard ~= nil and spent + reserved + amount > hard then
    return {0, i, redis.call('HGET', h, 'spent'), redis.call('HGET', h, 'reserved')}
  end
end
for i = 1, #KEYS do
  local h, z = KEYS[i], KEYS[i] .. ':r'
  redis.call('HINCRBY', h, 'reserved', ARGV[5])
  redis.call('HSET', h, 'r:' .. id, ARGV[5])
  redis.call('ZADD', z, now + ttl, id)
  redis.call('EXPIRE', z, keep)
end
return {1}
"""
)

# KEYS: the hashes; ARGV: the reservation id, the cost. Drops the reservation
# and adds the cost to spent (unless the hash is gone: then the database has
# it for the next seed). Returns each budget's spent after, or -1.
_SETTLE = """
local reply = {}
for i = 1, #KEYS do
  local h = KEYS[i]
  local held = redis.call('HGET', h, 'r:' .. ARGV[1])
  if held then
    redis.call('HINCRBY', h, 'reserved', string.format('%d', -tonumber(held)))
    redis.call('HDEL', h, 'r:' .. ARGV[1])
    redis.call('ZREM', h .. ':r', ARGV[1])
  end
  if redis.call('EXISTS', h) == 1 then
    reply[i] = tostring(redis.call('HINCRBY', h, 'spent', ARGV[2]))
  else
    reply[i] = '-1'
  end
end
return reply
"""

# KEYS: the reservation sets; ARGV: now, seconds, then the id for each key.
_RENEW = (
    LUA_NOW
    + """
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + tonumber(ARGV[2]), ARGV[2 + i])
end
return 0
"""
)


@dataclass(slots=True)
class Wanted:
    """One budget a request counts against: its counter's `key` (scope and period), its
    hard limit (None: alert only), the spend to seed the counter with, and how long the
    counter must outlive its period's start."""

    key: str
    hard: Decimal | None
    seed: Decimal
    keep_seconds: int


@dataclass(slots=True, eq=False)
class Hold:
    """What one request reserved, in which budgets, and where (Redis: `shared`)."""

    id: str
    keys: tuple[str, ...]
    amount: Decimal
    shared: bool
    settled: bool = False


@dataclass(slots=True)
class Refusal:
    """The budget (index into the wanted list) that refused, with what it had."""

    index: int
    spent: Decimal
    reserved: Decimal


class Budgets:
    """Reserves and settles budget spend; shared through `shared` (a SharedRedis) if given."""

    def __init__(self, shared=None, *, prefix: str = "aethergate", seconds: float = 60.0):
        self.shared = shared
        self.seconds = seconds
        self.prefix = f"{prefix}:bud:"
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(6)
        self.local: dict[str, Decimal] = {}  # key -> reserved by this process (local holds)
        self.live: dict[str, Hold] = {}  # this process's Redis holds, to renew
        if shared is not None:
            self._reserve = shared.redis.register_script(_RESERVE)
            self._settle = shared.redis.register_script(_SETTLE)
            self._renew = shared.redis.register_script(_RENEW)

    async def reserve(self, wanted: list[Wanted], amount: Decimal) -> Hold | Refusal:
        """Reserve `amount` in every budget of `wanted`, or say which would pass its limit."""
        hold_id = f"{self._id_prefix}{next(self._ids):x}"
        keys = tuple(w.key for w in wanted)
        if self.shared is not None and not self.shared.down():
            args = [self.shared.now(), self.seconds, max(w.keep_seconds for w in wanted), hold_id]
            args.append(_units(amount))
            for w in wanted:
                args += ["" if w.hard is None else _units(w.hard), _units(w.seed)]
            reply = await self.shared.run(
                self._reserve, [self.prefix + key for key in keys], args, "budgets"
            )
            if reply is not None:
                if not reply[0]:
                    return Refusal(reply[1] - 1, _amount(reply[2]), _amount(reply[3]))
                hold = self.live[hold_id] = Hold(hold_id, keys, amount, True)
                return hold
        for i, w in enumerate(wanted):
            reserved = self.local.get(w.key, Decimal(0))
            if w.hard is not None and w.seed + reserved + amount > w.hard:
                return Refusal(i, w.seed, reserved)
        for key in keys:
            self.local[key] = self.local.get(key, Decimal(0)) + amount
        return Hold(hold_id, keys, amount, False)

    async def settle(self, hold: Hold, cost: Decimal) -> list[Decimal | None]:
        """Replace `hold`'s reservation by `cost` (once). Returns each budget's spend after,
        as Redis counts it (None: kept in this process, or Redis did not answer)."""
        if hold.settled:
            return [None] * len(hold.keys)
        hold.settled = True
        if not hold.shared:
            for key in hold.keys:
                left = self.local[key] - hold.amount
                if left:
                    self.local[key] = left
                else:
                    del self.local[key]
            return [None] * len(hold.keys)
        del self.live[hold.id]
        reply = await self.shared.run(
            self._settle,
            [self.prefix + key for key in hold.keys],
            [hold.id, _units(cost)],
            "budgets",
        )
        if reply is None:
            return [None] * len(hold.keys)
        return [None if int(v) < 0 else _amount(v) for v in reply]

    async def read(self, key: str, seed: Decimal) -> tuple[Decimal, Decimal]:
        """(spent, reserved) of one budget now, for a report."""
        if self.shared is not None and not self.shared.down():
            try:
                spent, reserved = await self.shared.redis.hmget(
                    self.prefix + key, "spent", "reserved"
                )
            except (RedisError, OSError):  # a report, not a decision: fall back
                spent = reserved = None
            if spent is not None:
                return _amount(spent), _amount(reserved or 0)
        return seed, self.local.get(key, Decimal(0))

    async def renew(self) -> None:
        """Push back the expiry of every Redis reservation this process holds."""
        if not self.live or self.shared.down():
            return
        keys, ids = [], []
        for hold in self.live.values():
            for key in hold.keys:
                keys.append(f"{self.prefix}{key}:r")
                ids.append(hold.id)
        await self.shared.run(self._renew, keys, [self.shared.now(), self.seconds, *ids], "budgets")


def counter(scope: str, start) -> str:
    """The name of budget `scope`'s counter for the period that started at `start`."""
    return f"{scope}:{int(start.timestamp())}"


def _units(amount: Decimal) -> str:
    """`amount` as the integer of 10**-10 Redis keeps (rounded half even, as the database)."""
    return str(int((amount * SCALE).to_integral_value()))


def _amount(units) -> Decimal:
    return Decimal(int(units)) / SCALE
