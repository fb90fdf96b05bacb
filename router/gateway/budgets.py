"""Tenant budgets of the gateway: spend per UTC calendar period, shared by every replica through Redis.

A request of a tenant with a budget first **reserves** an estimate of its cost (:meth:`BudgetLedger.reserve`), then
**settles** the reservation with what the upstream billed (:meth:`BudgetLedger.settle`). A reservation is refused
(:class:`BudgetExceeded`, answer 429) when the tenant's settled spend plus the reservations in flight already reach
the budget. Because reservations count at once, on every replica, two replicas spending at the same moment overshoot
the budget by at most what the requests already admitted spend beyond the budget's remainder: with estimates that
are not below the actual costs, 50 concurrent 1 USD requests against 10 USD admit exactly 10.

Redis layout (all keys of one tenant and period share a hash tag, so the scripts also run on Redis Cluster)::

    <prefix>:{<sha256(tenant)>:<period id>}     hash: spent, reserved (integers, nano-USD)
    <prefix>:{<sha256(tenant)>:<period id>}:r   sorted set of reservations "<id>:<nano-USD>", scored by expiry (ms)

Period ids are ``2026-11-05`` (day), ``2026-W45`` (ISO week) and ``2026-11`` (month); the keys expire a week after
their period ends. Amounts are integers (nano-USD) so that ten 0.1 USD requests spend exactly 1 USD. A reservation
its replica never settles (the process died) stops counting after ``reservation_ttl_s``.

Redis unavailable (down, timing out, refusing the script): **fail-closed** by default. A tenant with a budget is
refused with :class:`BudgetUnavailable` (answer 503), because admitting it unmetered could spend any amount; after a
failure the ledger stops trying for ``down_s`` seconds, so an outage costs no connect timeout per request.
``fail_open=True`` admits such requests unmetered instead (their spend is not recorded) and logs a warning. Tenants
without a budget never touch Redis.

Without a Redis URL the ledger keeps the same books in this process: correct for ONE replica (one process) only;
with several workers or replicas each would hold its own budget.

:class:`TenantLabels` maps tenant names to a bounded set of Prometheus label values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from router.gateway.keys import Period, Tenant

log = logging.getLogger("tierwise.gateway.budgets")

NANO = 1_000_000_000  # ledger unit: 1e-9 USD
KEY_MARGIN_S = 7 * 86400  # a period's keys outlive it by a week (spend of the last period stays readable)
DEFAULT_PREFIX = "tierwise:budget"


class BudgetExceeded(Exception):
    """The tenant's budget for the current period is spent (answer 429, with ``retry_after_s``)."""

    def __init__(
        self,
        tenant: str,
        budget_usd: float,
        period: Period,
        period_id: str,
        spent_usd: float,
        reserved_usd: float,
        resets_at: dt.datetime,
        now: dt.datetime,
    ) -> None:
        self.tenant = tenant
        self.budget_usd = budget_usd
        self.period = period
        self.period_id = period_id
        self.spent_usd = spent_usd
        self.reserved_usd = reserved_usd
        self.resets_at = resets_at
        self.retry_after_s = max(1, math.ceil((resets_at - now).total_seconds()))
        in_flight = f" and {reserved_usd:.6g} USD in requests in flight" if reserved_usd > 0 else ""
        super().__init__(
            f"tenant {tenant!r} has spent its budget of {budget_usd:.6g} USD for the {period} {period_id} "
            f"({spent_usd:.6g} USD spent{in_flight}); it resets at {_iso(resets_at)}"
        )


class BudgetUnavailable(Exception):
    """The budget store (Redis) cannot be reached, so a budgeted tenant's request cannot be metered (answer 503)."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Reservation:
    """An admitted request's claim on its tenant's budget; settle it exactly once.

    ``recorded`` is False for a tenant without a budget, and for a request admitted unmetered while Redis was
    down (``fail_open``); settling those does nothing.
    """

    tenant: str
    estimate_usd: float
    period_id: str | None = None
    recorded: bool = False
    _key: str = ""
    _member: str = ""
    _amount: int = 0
    _key_expires_at: float = 0.0  # epoch seconds
    settled: bool = False


@dataclass(frozen=True)
class Usage:
    """A tenant's books for the current period."""

    tenant: str
    budget_usd: float
    period: Period
    period_id: str
    spent_usd: float
    reserved_usd: float
    resets_at: dt.datetime


# --- periods -------------------------------------------------------------------------------------------------------
def period_bounds(period: Period, now: dt.datetime) -> tuple[str, dt.datetime]:
    """The id of the UTC calendar period holding ``now`` and the moment it ends (the next one starts)."""
    now = now.astimezone(dt.UTC)
    day = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC)
    if period == "day":
        return day.strftime("%Y-%m-%d"), day + dt.timedelta(days=1)
    if period == "week":
        year, week, weekday = now.isocalendar()
        return f"{year}-W{week:02d}", day + dt.timedelta(days=8 - weekday)
    if period == "month":
        end = dt.datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=dt.UTC)
        return f"{now.year}-{now.month:02d}", end
    raise ValueError(f"unknown budget period {period!r}; periods are day, week and month")


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _nano(usd: float, what: str) -> int:
    if not isinstance(usd, (int, float)) or isinstance(usd, bool) or not math.isfinite(usd) or usd < 0:
        raise ValueError(f"{what} must be a finite number >= 0 (USD), got {usd!r}")
    return round(usd * NANO)


# --- Redis scripts (all integers travel as strings: Lua numbers are doubles) -------------------------------------
# Drop reservations whose expiry passed, freeing what they held.
_PURGE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, member in ipairs(expired) do
  local amount = string.match(member, ':(%d+)$')
  if amount and amount ~= '0' then redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. amount) end
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1]) end
local spent = redis.call('HGET', KEYS[1], 'spent') or '0'
local reserved = redis.call('HGET', KEYS[1], 'reserved') or '0'
"""
# ARGV: now_ms, budget, amount, member, member_expiry_ms, key_ttl_s -> {admitted 0/1, spent, reserved}
_RESERVE = (
    _PURGE
    + """
if tonumber(spent) + tonumber(reserved) >= tonumber(ARGV[2]) then return {0, spent, reserved} end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
reserved = tostring(redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[3]))
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {1, spent, reserved}
"""
)
# ARGV: now_ms -> {spent, reserved}
_USAGE = (
    _PURGE
    + """
return {spent, reserved}
"""
)
# ARGV: member, amount, actual, key_ttl_s -> 1 if the reservation was still held (else it had expired)
_SETTLE = """
local held = redis.call('ZREM', KEYS[2], ARGV[1])
if held == 1 and ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. ARGV[2]) end
if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[1], 'spent', ARGV[3]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return held
"""


class _RedisBooks:
    def __init__(self, url: str, connect_timeout_s: float, timeout_s: float, max_connections: int) -> None:
        # A bounded pool: a burst of requests queues for a connection (each script runs in microseconds) instead of
        # opening hundreds of sockets at once. One immediate retry on a connection error replaces a pooled
        # connection Redis closed (a restart); no retry on timeouts, so an unresponsive Redis costs one timeout.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=connect_timeout_s + timeout_s,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            decode_responses=True,
        )
        self.client = aioredis.Redis.from_pool(pool)
        self.reserve_script = self.client.register_script(_RESERVE)
        self.usage_script = self.client.register_script(_USAGE)
        self.settle_script = self.client.register_script(_SETTLE)

    async def reserve(
        self, key: str, now_ms: int, budget: int, amount: int, member: str, expiry_ms: int, key_ttl_s: int
    ) -> tuple[bool, int, int]:
        out = await self.reserve_script(
            keys=[key, key + ":r"], args=[now_ms, budget, amount, member, expiry_ms, key_ttl_s]
        )
        return bool(int(out[0])), int(out[1]), int(out[2])

    async def usage(self, key: str, now_ms: int) -> tuple[int, int]:
        out = await self.usage_script(keys=[key, key + ":r"], args=[now_ms])
        return int(out[0]), int(out[1])

    async def settle(self, key: str, member: str, amount: int, actual: int, key_ttl_s: int) -> None:
        await self.settle_script(keys=[key, key + ":r"], args=[member, amount, actual, key_ttl_s])

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass
class _Book:
    spent: int = 0
    reserved: int = 0
    expires_at: float = 0.0
    held: dict[str, tuple[int, int]] | None = None  # member -> (amount, expiry ms)


class _MemoryBooks:
    """The Redis scripts' semantics on a dict (one process); a lock makes each call atomic across threads too."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._books: dict[str, _Book] = {}
        self._lock = threading.Lock()

    def _book(self, key: str, now_ms: int) -> _Book:
        now = now_ms / 1000
        for k in [k for k, b in self._books.items() if b.expires_at <= now]:  # keys past their TTL are gone
            del self._books[k]
        book = self._books.setdefault(key, _Book(expires_at=now + 60, held={}))
        assert book.held is not None
        for member, (amount, expiry) in list(book.held.items()):
            if expiry <= now_ms:
                del book.held[member]
                book.reserved -= amount
        return book

    async def reserve(
        self, key: str, now_ms: int, budget: int, amount: int, member: str, expiry_ms: int, key_ttl_s: int
    ) -> tuple[bool, int, int]:
        with self._lock:
            book = self._book(key, now_ms)
            if book.spent + book.reserved >= budget:
                return False, book.spent, book.reserved
            assert book.held is not None
            book.held[member] = (amount, expiry_ms)
            book.reserved += amount
            book.expires_at = now_ms / 1000 + key_ttl_s
            return True, book.spent, book.reserved

    async def usage(self, key: str, now_ms: int) -> tuple[int, int]:
        with self._lock:
            book = self._book(key, now_ms)
            return book.spent, book.reserved

    async def settle(self, key: str, member: str, amount: int, actual: int, key_ttl_s: int) -> None:
        with self._lock:
            now = self._clock()
            book = self._book(key, int(now * 1000))
            assert book.held is not None
            if book.held.pop(member, None) is not None:
                book.reserved -= amount
            book.spent += actual
            book.expires_at = now + key_ttl_s

    async def aclose(self) -> None:
        return None


class BudgetLedger:
    """Reserve and settle tenants' spend against their budgets; shared across replicas when ``redis_url`` is set.

    ``redis_url`` None keeps the books in this process (ONE replica only: see the module docstring). ``clock``
    gives the time (epoch seconds; tests move it across periods). Per request, with ``tenant`` from
    :meth:`router.gateway.keys.KeyStore.authenticate`::

        reservation = await ledger.reserve(tenant, estimate_usd)   # BudgetExceeded -> 429, BudgetUnavailable -> 503
        ...call the upstream...
        await ledger.settle(reservation, actual_usd)               # None when nothing was billed
    """

    def __init__(
        self,
        redis_url: str | None,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
        fail_open: bool = False,
        reservation_ttl_s: float = 3600.0,
        connect_timeout_s: float = 1.0,
        timeout_s: float = 0.5,
        max_connections: int = 32,
        down_s: float = 1.0,
    ) -> None:
        if not prefix or any(c in prefix for c in "{} \n"):
            raise ValueError("prefix must be non-empty, without braces or whitespace")
        if not (reservation_ttl_s > 0 and math.isfinite(reservation_ttl_s)):
            raise ValueError("reservation_ttl_s must be a finite number > 0")
        self.prefix = prefix
        self.clock = clock
        self.fail_open = fail_open
        self.reservation_ttl_s = reservation_ttl_s
        self.down_s = down_s
        self.shared = redis_url is not None
        self._where = _redis_host(redis_url) if redis_url else "this process"
        self._books: _RedisBooks | _MemoryBooks = (
            _RedisBooks(redis_url, connect_timeout_s, timeout_s, max_connections) if redis_url else _MemoryBooks(clock)
        )
        self._down_until = 0.0  # time.monotonic(): skip Redis until then after a failure

    # --- the three calls ---------------------------------------------------------------------------------------
    async def reserve(self, tenant: Tenant, estimate_usd: float) -> Reservation:
        """Claim ``estimate_usd`` of the tenant's budget for one request.

        Raises :class:`BudgetExceeded` when the settled spend plus the reservations in flight reach the budget, and
        :class:`BudgetUnavailable` when Redis cannot be reached (fail-closed). A tenant without a budget gets an
        unrecorded reservation at once, without touching Redis.
        """
        amount = _nano(estimate_usd, "estimate_usd")
        if not tenant.has_budget:
            return Reservation(tenant.name, estimate_usd)
        budget_usd, period = cast(float, tenant.budget_usd), cast(Period, tenant.period)
        now = self.clock()
        now_dt = dt.datetime.fromtimestamp(now, dt.UTC)
        period_id, ends = period_bounds(period, now_dt)
        key = self._key(tenant.name, period_id)
        key_expires_at = ends.timestamp() + KEY_MARGIN_S
        member = f"{secrets.token_hex(8)}:{amount}"
        now_ms = int(now * 1000)
        expiry_ms = now_ms + int(self.reservation_ttl_s * 1000)
        try:
            self._check_up(tenant)
            ok, spent, reserved = await self._call(
                tenant,
                self._books.reserve(
                    key, now_ms, _nano(budget_usd, "budget_usd"), amount, member, expiry_ms, _ttl(key_expires_at, now)
                ),
            )
        except _Unmetered:
            return Reservation(tenant.name, estimate_usd, period_id)
        if not ok:
            raise BudgetExceeded(
                tenant.name, budget_usd, period, period_id, spent / NANO, reserved / NANO, ends, now_dt
            )
        return Reservation(tenant.name, estimate_usd, period_id, True, key, member, amount, key_expires_at)

    async def settle(self, reservation: Reservation, actual_usd: float | None) -> None:
        """Replace the reservation by the spend it turned into: ``actual_usd``, or nothing (None: release it).

        The spend is booked to the period the reservation was made in. A second settle of one reservation raises
        ValueError (it would count the spend twice); so do a negative or non-finite amount. Raises
        :class:`BudgetUnavailable` when Redis cannot be reached: the spend is then lost and the reservation stops
        counting after ``reservation_ttl_s`` (log it; the answer is already on its way).
        """
        actual = 0 if actual_usd is None else _nano(actual_usd, "actual_usd")
        if reservation.settled:
            raise ValueError(f"the reservation of tenant {reservation.tenant!r} is already settled")
        reservation.settled = True
        if not reservation.recorded:
            return
        now = self.clock()
        await self._call(
            None,
            self._books.settle(
                reservation._key,
                reservation._member,
                reservation._amount,
                actual,
                _ttl(reservation._key_expires_at, now),
            ),
        )

    async def spent(self, tenant: Tenant) -> float:
        """USD the tenant has spent (settled) in the current period; 0.0 for a tenant without a budget (its spend
        is not tracked here)."""
        usage = await self.usage(tenant)
        return 0.0 if usage is None else usage.spent_usd

    async def usage(self, tenant: Tenant) -> Usage | None:
        """The tenant's books for the current period (None without a budget); :class:`BudgetUnavailable` when
        Redis cannot be reached."""
        if not tenant.has_budget:
            return None
        budget_usd, period = cast(float, tenant.budget_usd), cast(Period, tenant.period)
        now = self.clock()
        period_id, ends = period_bounds(period, dt.datetime.fromtimestamp(now, dt.UTC))
        spent, reserved = await self._call(None, self._books.usage(self._key(tenant.name, period_id), int(now * 1000)))
        return Usage(tenant.name, budget_usd, period, period_id, spent / NANO, reserved / NANO, ends)

    async def aclose(self) -> None:
        await self._books.aclose()

    # --- helpers -----------------------------------------------------------------------------------------------
    def _key(self, tenant: str, period_id: str) -> str:
        # hashed: a tenant name may hold ':' or braces, which would change the key's shape or hash slot
        return f"{self.prefix}:{{{hashlib.sha256(tenant.encode('utf-8')).hexdigest()}:{period_id}}}"

    def _check_up(self, tenant: Tenant) -> None:
        if self._down_until and time.monotonic() < self._down_until:
            self._unavailable(tenant, "it failed moments ago", None)

    async def _call(self, tenant: Tenant | None, op: Any) -> Any:
        """Await ``op``; a Redis failure becomes :class:`BudgetUnavailable` (or :class:`_Unmetered` when failing
        open on a reservation)."""
        try:
            result = await op
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self.down_s
            why = f"{type(exc).__name__}: {exc}"
            # one line per failure; the requests skipped during down_s after it are not logged again
            mode = "admitting budgeted tenants unmetered (fail_open)" if self.fail_open else "refusing budgeted tenants"
            log.warning("budget store (Redis at %s) unavailable (%s): %s for %gs", self._where, why, mode, self.down_s)
            self._unavailable(tenant, why, exc)
        self._down_until = 0.0
        return result

    def _unavailable(self, tenant: Tenant | None, why: str, exc: BaseException | None) -> NoReturn:
        if tenant is not None and self.fail_open:
            raise _Unmetered from exc
        retry = max(1, math.ceil(self.down_s))
        what = (
            f"tenant {tenant.name!r} has a budget and its spend cannot be metered, so the request is refused "
            "(fail-closed)"
            if tenant is not None
            else "the tenant's books cannot be read or written"
        )
        raise BudgetUnavailable(
            f"budget store (Redis at {self._where}) unavailable ({why}); {what}", retry_after_s=retry
        ) from exc


class _Unmetered(Exception):
    """Internal: Redis failed and the ledger fails open."""


def _ttl(expires_at: float, now: float) -> int:
    """Seconds until ``expires_at``; at least a minute (a very late settle still lands somewhere and expires)."""
    return max(60, math.ceil(expires_at - now))


def _redis_host(url: str) -> str:
    """``host:port`` of a Redis URL, for messages (never the password)."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return "the configured URL"


# --- metrics labels ------------------------------------------------------------------------------------------------
class TenantLabels:
    """Bounded Prometheus label values for tenants: the first ``limit`` tenants seen keep their name, every later
    one is ``other`` (so a flood of tenant names cannot grow the series without bound); no tenant is ``""``.

    ``preset`` names (e.g. the keys file's tenants, sorted) are admitted first, so that every worker labels them
    alike; each worker admits further names on its own, so with N workers writing one multiprocess registry there
    are at most ``N * limit + 2`` values. A tenant literally named ``other`` shares the overflow's label.
    """

    OVERFLOW = "other"

    def __init__(self, limit: int = 100, preset: Iterable[str] = ()) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()
        for name in preset:
            self.label(name)

    def label(self, tenant: str | None) -> str:
        if not tenant:
            return ""
        if tenant in self._known:
            return tenant
        with self._lock:
            if tenant in self._known:
                return tenant
            if len(self._known) < self.limit:
                self._known.add(tenant)
                return tenant
        return self.OVERFLOW

    def __len__(self) -> int:
        return len(self._known)
