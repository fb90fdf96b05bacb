"""Client API keys (router.gateway.keys) and tenant budgets (router.gateway.budgets) of the gateway.

Budget tests run on the real Redis server at 127.0.0.1:6379 (each test under a prefix of its own, deleted after it)
and on the in-process ledger, with the same assertions. A missing Redis fails these tests: it never skips them.
Async code runs under ``asyncio.run`` (pytest-asyncio is not a dependency).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from service_server import free_port

from router.gateway.budgets import (
    KEY_MARGIN_S,
    BudgetExceeded,
    BudgetLedger,
    BudgetUnavailable,
    Reservation,
    TenantLabels,
    period_bounds,
)
from router.gateway.keys import (
    KeysError,
    KeyStore,
    Tenant,
    add_key,
    bearer_token,
    cap_tier,
    generate_key,
    hash_key,
)

T = TypeVar("T")
REDIS_URL = "redis://127.0.0.1:6379/0"
HASH_A = hashlib.sha256(b"key-a").hexdigest()
HASH_B = hashlib.sha256(b"key-b").hexdigest()


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def write(tmp_path: Path, text: str, name: str = "keys.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(KeysError) as info:
        KeyStore.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # every error names the file
    return message


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC).timestamp()


class Clock:
    """A clock the test moves (epoch seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the keys file -------------------------------------------------------------------------------------------------
VALID = f"""\
tenants:
  acme: {{budget_usd: 50, period: month, max_tier: medium}}
  beta: {{}}
  token: {{budget_usd: 1.5e1, period: day}}
keys:
  - {{sha256: "{HASH_A}", tenant: acme, name: acme-prod}}
  - {{sha256: "{HASH_B.upper()}", tenant: beta}}
"""


def test_valid_file_loads_tenants_and_keys(tmp_path: Path) -> None:
    store = KeyStore.load(write(tmp_path, VALID))
    assert len(store) == 2
    assert store.tenants["acme"] == Tenant("acme", 50.0, "month", "medium")
    assert store.tenants["beta"] == Tenant("beta")
    assert not store.tenants["beta"].has_budget
    # a tenant may be called "token" (names are not fields); YAML's 1.5e1 text is read as the number it is
    assert store.tenants["token"] == Tenant("token", 15.0, "day")
    assert store.authenticate("Bearer key-a") == store.tenants["acme"]
    assert store.authenticate("Bearer key-b") == store.tenants["beta"]  # upper-case hex is the same hash
    found = store.lookup("Bearer key-a")
    assert found is not None and found.name == "acme-prod" and HASH_A not in repr(found)


@pytest.mark.parametrize("field", ["key", "api_key", "token", "secret", "api-key", "Password"])
def test_plaintext_key_field_refused(tmp_path: Path, field: str) -> None:
    plaintext = "sk-live-0123456789abcdef"
    message = refused(tmp_path, f"tenants: {{acme: {{}}}}\nkeys:\n  - {{{field}: {plaintext}, tenant: acme}}\n")
    assert f"keys.0.{field}: a plaintext key is refused" in message
    assert plaintext not in message


def test_plaintext_field_refused_under_a_tenant_too(tmp_path: Path) -> None:
    message = refused(tmp_path, "tenants:\n  acme: {token: abc}\nkeys: []\n")
    assert "tenants.acme.token: a plaintext key is refused" in message


def test_value_that_looks_like_a_tierwise_key_is_refused_anywhere(tmp_path: Path) -> None:
    key = generate_key()
    message = refused(
        tmp_path, f"tenants: {{acme: {{}}}}\nkeys:\n  - {{sha256: '{HASH_A}', tenant: acme, name: {key}}}\n"
    )
    assert "keys.0.name: a plaintext key is refused" in message
    assert key not in message
    message = refused(tmp_path, f"tenants:\n  {key}: {{}}\nkeys: []\n")  # pasted as a tenant's name
    assert "a plaintext key is refused" in message and key not in message


@pytest.mark.parametrize("value", ["abc123", "tw-" + "x" * 10, HASH_A[:63], HASH_A + "0", "g" * 64])
def test_sha256_must_be_64_hex_digits(tmp_path: Path, value: str) -> None:
    message = refused(tmp_path, f"tenants: {{acme: {{}}}}\nkeys:\n  - {{sha256: '{value}', tenant: acme}}\n")
    assert "keys.0.sha256: must be the SHA-256 of the key as 64 hex digits, not the key itself" in message
    assert value not in message  # a pasted key is never echoed


def test_unknown_tenant_in_keys(tmp_path: Path) -> None:
    message = refused(tmp_path, f"tenants: {{acme: {{}}}}\nkeys:\n  - {{sha256: '{HASH_A}', tenant: acne}}\n")
    assert "keys.0.tenant: unknown tenant 'acne'; tenants are acme" in message


def test_duplicate_hash_refused_whatever_its_case(tmp_path: Path) -> None:
    text = (
        f"tenants: {{acme: {{}}, beta: {{}}}}\nkeys:\n  - {{sha256: '{HASH_A}', tenant: acme}}\n"
        f"  - {{sha256: '{HASH_B}', tenant: beta}}\n  - {{sha256: '{HASH_A.upper()}', tenant: beta}}\n"
    )
    assert "keys.2.sha256: the same hash as keys.0.sha256" in refused(tmp_path, text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("-1", "tenants.acme.budget_usd: Input should be greater than or equal to 0 (got -1)"),
        (".inf", "tenants.acme.budget_usd: must be a finite number"),
        (".nan", "tenants.acme.budget_usd: must be a finite number"),
        ("true", "tenants.acme.budget_usd: must be a number, not true/false"),
        ("1e12", "tenants.acme.budget_usd: Input should be less than or equal to 1000000000"),
        ("fifty", "tenants.acme.budget_usd: Input should be a valid number"),
    ],
)
def test_bad_budget_refused(tmp_path: Path, value: str, expected: str) -> None:
    message = refused(tmp_path, f"tenants:\n  acme: {{budget_usd: {value}, period: month}}\nkeys: []\n")
    assert expected in message


def test_budget_and_period_go_together(tmp_path: Path) -> None:
    assert "tenants.acme: period: field required with budget_usd" in refused(
        tmp_path, "tenants:\n  acme: {budget_usd: 5}\n"
    )
    assert "tenants.acme: budget_usd: field required with period" in refused(
        tmp_path, "tenants:\n  acme: {period: week}\n"
    )
    assert "tenants.acme.period: Input should be 'day', 'week' or 'month'" in refused(
        tmp_path, "tenants:\n  acme: {budget_usd: 5, period: year}\n"
    )


def test_file_shape_errors(tmp_path: Path) -> None:
    assert "tenants.acme.budget: unknown field" in refused(tmp_path, "tenants:\n  acme: {budget: 5}\n")
    assert "tenants.a b.[key]: a tenant name is 1-200 characters" in refused(tmp_path, "tenants:\n  a b: {}\n")
    assert "not valid YAML: duplicate key 'acme'" in refused(tmp_path, "tenants:\n  acme: {}\n  acme: {}\n")
    assert "the file is empty" in refused(tmp_path, "")
    assert "a mapping with 'tenants' and 'keys'" in refused(tmp_path, "- a\n- b\n")
    with pytest.raises(KeysError, match="client keys file not found: .*missing.yaml"):
        KeyStore.load(tmp_path / "missing.yaml")
    # no keys at all is a valid (closed) gateway
    assert len(KeyStore.load(write(tmp_path, "tenants: {}\nkeys: []\n"))) == 0


def test_check_tiers_names_the_tenant(tmp_path: Path) -> None:
    store = KeyStore.load(write(tmp_path, VALID))
    store.check_tiers(["small", "medium", "large"])
    with pytest.raises(KeysError, match=r"keys.yaml: tenants.acme.max_tier: unknown tier 'medium'"):
        store.check_tiers(["small", "large"])


def test_cap_tier_takes_the_lower_cap() -> None:
    order = ["small", "medium", "large"]
    capped = Tenant("acme", max_tier="medium")
    assert cap_tier(capped, None, order.index) == "medium"
    assert cap_tier(capped, "large", order.index) == "medium"
    assert cap_tier(capped, "small", order.index) == "small"
    assert cap_tier(Tenant("beta"), "large", order.index) == "large"
    assert cap_tier(Tenant("beta"), None, order.index) is None


# --- keys ----------------------------------------------------------------------------------------------------------
def test_generate_and_hash_key() -> None:
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(re.fullmatch(r"tw-[A-Za-z0-9_-]{43}", k) for k in keys)
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 vector


def test_add_key_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "keys.yaml"
    key = add_key(path, "acme", name="acme-prod", budget_usd=50, period="month", max_tier="medium")
    text = path.read_text(encoding="utf-8")
    assert key not in text and hash_key(key) in text  # only the hash is stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a new file is private
    store = KeyStore.load(path)
    assert store.authenticate(f"Bearer {key}") == Tenant("acme", 50.0, "month", "medium")
    assert store.lookup(f"Bearer {key}").name == "acme-prod"  # type: ignore[union-attr]

    # a second key: another tenant added, the first key kept, the tenant's values updated only when given
    os.chmod(path, 0o640)
    key2 = add_key(path, "beta")
    key3 = add_key(path, "acme", budget_usd=75)
    store = KeyStore.load(path)
    assert len(store) == 3
    assert store.authenticate(f"Bearer {key}") == Tenant("acme", 75.0, "month", "medium")
    assert store.authenticate(f"Bearer {key2}") == Tenant("beta")
    assert store.authenticate(f"Bearer {key3}") == store.tenants["acme"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # an existing file keeps its permissions
    assert len({key, key2, key3}) == 3
    assert not [p for p in path.parent.iterdir() if p.name != "keys.yaml"]  # no temporary debris


def test_add_key_validates_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    add_key(path, "acme")
    before = path.read_bytes()
    with pytest.raises(KeysError, match=r"keys.yaml: tenants.acme.budget_usd: Input should be greater"):
        add_key(path, "acme", budget_usd=-5, period="day")
    with pytest.raises(KeysError, match=r"keys.yaml: tenants.acme: period: field required with budget_usd"):
        add_key(path, "acme", budget_usd=5)
    with pytest.raises(KeysError, match=r"a tenant name is 1-200 characters"):
        add_key(path, "bad tenant")
    assert path.read_bytes() == before
    # an invalid file is never overwritten
    path.write_text("tenants: {acme: {key: plaintext}}\n", encoding="utf-8")
    with pytest.raises(KeysError, match="plaintext key is refused"):
        add_key(path, "acme")
    assert path.read_text(encoding="utf-8") == "tenants: {acme: {key: plaintext}}\n"


def test_add_key_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails at the last step (the rename) leaves the old file whole and no temporary file."""
    path = tmp_path / "keys.yaml"
    first = add_key(path, "acme")
    before = path.read_bytes()

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        add_key(path, "beta")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.yaml"]
    assert KeyStore.load(path).authenticate(f"Bearer {first}") is not None


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic a2V5LWE=",
        "key-a",
        "Token key-a",
        "Bearer key-A",
        "Bearer key-a extra",
        "Bearer wrong",
        f"Bearer {HASH_A}",
        "Bearer " + "k" * 600,
        "Bearer kéy-a",
    ],
)
def test_authenticate_refuses(tmp_path: Path, header: str | None) -> None:
    store = KeyStore.load(write(tmp_path, VALID))
    assert store.authenticate(header) is None  # the stored hash itself is not a key either


def test_authenticate_accepts_bearer_any_case_and_spacing(tmp_path: Path) -> None:
    store = KeyStore.load(write(tmp_path, VALID))
    for header in ("Bearer key-a", "bearer key-a", "BEARER   key-a ", " Bearer key-a"):
        assert store.authenticate(header) == store.tenants["acme"], header
    assert bearer_token("Bearer  tw-abc ") == "tw-abc"


# --- budgets: fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_server() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:  # a failure, not a skip: these tests are the point of the module
        pytest.fail(f"the budget tests need Redis at {REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_server: redis.Redis) -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    p = f"tierwise:test:{secrets.token_hex(6)}"
    yield p
    keys = list(redis_server.scan_iter(match=f"{p}:*"))
    if keys:
        redis_server.delete(*keys)


LedgerFactory = Callable[..., BudgetLedger]


@pytest.fixture(params=["redis", "memory"])
def ledger(request: pytest.FixtureRequest, prefix: str) -> LedgerFactory:
    """Make a ledger on the shared Redis (every ledger of one test shares its books) or in this process."""
    url = REDIS_URL if request.param == "redis" else None

    def make(**kwargs: Any) -> BudgetLedger:
        return BudgetLedger(url, prefix=prefix, **kwargs)

    return make


def redis_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}:*"))


# --- budgets: arithmetic -------------------------------------------------------------------------------------------
def test_reserve_and_settle_arithmetic(ledger: LedgerFactory) -> None:
    acme = Tenant("acme", 10.0, "month")

    async def scenario() -> None:
        led = ledger(clock=Clock(utc(2026, 11, 5, 12)))
        try:
            r = await led.reserve(acme, 3.0)
            usage = await led.usage(acme)
            assert usage is not None and (usage.spent_usd, usage.reserved_usd) == (0.0, 3.0)
            await led.settle(r, 2.5)  # the reservation becomes the actual spend
            usage = await led.usage(acme)
            assert usage is not None and (usage.spent_usd, usage.reserved_usd) == (2.5, 0.0)
            r = await led.reserve(acme, 4.0)
            await led.settle(r, None)  # released: nothing billed
            assert await led.spent(acme) == 2.5
            r = await led.reserve(acme, 0.1)
            await led.settle(r, 7.0)  # more than estimated: the actual spend counts
            assert await led.spent(acme) == 9.5
            # integer nano-USD books: ten 0.1 USD settle to exactly 1 USD (floats would give 0.9999999999999999)
            other = Tenant("other", 1.0, "day")
            for _ in range(10):
                await led.settle(await led.reserve(other, 0.1), 0.1)
            assert await led.spent(other) == 1.0
            with pytest.raises(BudgetExceeded):
                await led.reserve(other, 0.0)
            usage = await led.usage(acme)
            assert usage is not None and usage.reserved_usd == 0.0
        finally:
            await led.aclose()

    run(scenario())


def test_settle_misuse_is_refused(ledger: LedgerFactory) -> None:
    acme = Tenant("acme", 10.0, "month")

    async def scenario() -> None:
        led = ledger()
        try:
            r = await led.reserve(acme, 1.0)
            with pytest.raises(ValueError, match="actual_usd must be a finite number >= 0"):
                await led.settle(r, -1.0)
            await led.settle(r, 1.0)
            with pytest.raises(ValueError, match="already settled"):
                await led.settle(r, 1.0)
            assert await led.spent(acme) == 1.0  # not counted twice
            for bad in (-0.5, float("nan"), float("inf")):
                with pytest.raises(ValueError, match="estimate_usd must be a finite number >= 0"):
                    await led.reserve(acme, bad)
        finally:
            await led.aclose()

    run(scenario())


def test_budget_exceeded_message(ledger: LedgerFactory) -> None:
    acme = Tenant("acme", 5.0, "month")
    clock = Clock(utc(2026, 11, 30, 23, 0))

    async def scenario() -> BudgetExceeded:
        led = ledger(clock=clock)
        try:
            await led.settle(await led.reserve(acme, 1.0), 4.25)
            await led.reserve(acme, 1.0)  # in flight: 4.25 + 1 >= 5
            with pytest.raises(BudgetExceeded) as info:
                await led.reserve(acme, 1.0)
            return info.value
        finally:
            await led.aclose()

    exc = run(scenario())
    assert str(exc) == (
        "tenant 'acme' has spent its budget of 5 USD for the month 2026-11 (4.25 USD spent and 1 USD in requests "
        "in flight); it resets at 2026-12-01T00:00:00Z"
    )
    assert (exc.tenant, exc.budget_usd, exc.period, exc.spent_usd, exc.reserved_usd) == ("acme", 5.0, "month", 4.25, 1)
    assert exc.retry_after_s == 3600  # for a Retry-After header


def test_zero_budget_refuses_everything(ledger: LedgerFactory) -> None:
    async def scenario() -> None:
        led = ledger()
        try:
            with pytest.raises(BudgetExceeded, match="budget of 0 USD"):
                await led.reserve(Tenant("suspended", 0.0, "day"), 0.0)
        finally:
            await led.aclose()

    run(scenario())


def test_period_rollover(ledger: LedgerFactory) -> None:
    acme = Tenant("acme", 2.0, "month")
    clock = Clock(utc(2026, 11, 30, 23, 59, 50))

    async def scenario() -> None:
        led = ledger(clock=clock)
        try:
            await led.settle(await led.reserve(acme, 1.0), 1.0)
            late = await led.reserve(acme, 1.0)  # made in November, settled in December
            with pytest.raises(BudgetExceeded, match="resets at 2026-12-01T00:00:00Z"):
                await led.reserve(acme, 1.0)
            clock.now = utc(2026, 12, 1)
            assert await led.spent(acme) == 0.0  # a new month, a new budget
            fresh = await led.reserve(acme, 1.5)
            await led.settle(late, 1.0)  # booked to November: December's books do not move
            usage = await led.usage(acme)
            assert usage is not None and (usage.period_id, usage.spent_usd, usage.reserved_usd) == ("2026-12", 0, 1.5)
            await led.settle(fresh, 1.5)
            clock.now = utc(2026, 11, 15)  # November's books: both of its requests
            assert await led.spent(acme) == 2.0
        finally:
            await led.aclose()

    run(scenario())


def test_period_bounds_are_utc_calendar_periods() -> None:
    thu = dt.datetime(2026, 12, 31, 15, 30, tzinfo=dt.UTC)
    assert period_bounds("day", thu) == ("2026-12-31", dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    assert period_bounds("week", thu) == ("2026-W53", dt.datetime(2027, 1, 4, tzinfo=dt.UTC))  # ISO week, Monday
    assert period_bounds("month", thu) == ("2026-12", dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    sunday = dt.datetime(2026, 11, 8, 23, 59, tzinfo=dt.UTC)
    assert period_bounds("week", sunday) == ("2026-W45", dt.datetime(2026, 11, 9, tzinfo=dt.UTC))
    # a non-UTC time is placed in its UTC period
    tokyo = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    assert period_bounds("month", tokyo)[0] == "2026-11"


def test_unsettled_reservation_expires(ledger: LedgerFactory) -> None:
    """A replica that dies between reserve and settle holds its reservation for reservation_ttl_s, no longer."""
    acme = Tenant("acme", 1.0, "week")
    clock = Clock(utc(2026, 11, 4, 10))

    async def scenario() -> None:
        led = ledger(clock=clock, reservation_ttl_s=60)
        try:
            orphan = await led.reserve(acme, 1.0)
            with pytest.raises(BudgetExceeded):
                await led.reserve(acme, 0.5)
            clock.now += 61
            r = await led.reserve(acme, 0.5)
            usage = await led.usage(acme)
            assert usage is not None and usage.reserved_usd == 0.5
            await led.settle(orphan, 0.25)  # a settle after expiry still books the spend, frees nothing twice
            usage = await led.usage(acme)
            assert usage is not None and (usage.spent_usd, usage.reserved_usd) == (0.25, 0.5)
            await led.settle(r, None)
        finally:
            await led.aclose()

    run(scenario())


def test_two_replicas_spending_at_once_never_overshoot(ledger: LedgerFactory) -> None:
    """50 concurrent 1 USD requests against 10 USD, spread over two ledgers (replicas): exactly 10 admitted. The
    in-process ledger holds one replica's books, so it runs the 50 requests on one ledger."""
    acme = Tenant("acme", 10.0, "month")

    async def scenario() -> tuple[int, int, float]:
        a = ledger()
        b = ledger() if a.shared else a
        try:

            async def one(led: BudgetLedger) -> Reservation | None:
                try:
                    return await led.reserve(acme, 1.0)
                except BudgetExceeded:
                    return None

            results = await asyncio.gather(*(one(a if i % 2 else b) for i in range(50)))
            admitted = [r for r in results if r is not None]
            await asyncio.gather(*(a.settle(r, 1.0) for r in admitted))
            return len(admitted), len(results) - len(admitted), await b.spent(acme)
        finally:
            await a.aclose()
            if b is not a:
                await b.aclose()

    assert run(scenario()) == (10, 40, 10.0)


def test_two_replicas_in_threads_share_one_budget(prefix: str) -> None:
    """Two ledgers in two threads (two event loops, two connection pools) against one Redis: 200 concurrent
    reservations of 0.1 USD against 7 USD admit exactly 70."""
    acme = Tenant("acme", 7.0, "day")
    barrier = threading.Barrier(2)
    admitted: list[int] = []

    def replica() -> None:
        async def main() -> int:
            led = BudgetLedger(REDIS_URL, prefix=prefix)
            try:
                await led.usage(acme)  # connect before the start line
                barrier.wait()

                async def one() -> int:
                    try:
                        await led.reserve(acme, 0.1)
                        return 1
                    except BudgetExceeded:
                        return 0

                return sum(await asyncio.gather(*(one() for _ in range(100))))
            finally:
                await led.aclose()

        admitted.append(asyncio.run(main()))

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(admitted) == 2 and sum(admitted) == 70, admitted


def test_redis_keys_carry_the_period_and_expire_after_it(redis_server: redis.Redis, prefix: str) -> None:
    acme = Tenant("acme", 10.0, "month")
    now = time.time()
    period_id, ends = period_bounds("month", dt.datetime.fromtimestamp(now, dt.UTC))

    async def scenario() -> None:
        led = BudgetLedger(REDIS_URL, prefix=prefix)
        try:
            await led.settle(await led.reserve(acme, 1.0), 1.0)
            await led.reserve(acme, 1.0)
        finally:
            await led.aclose()

    run(scenario())
    tenant_hash = hashlib.sha256(b"acme").hexdigest()
    base = f"{prefix}:{{{tenant_hash}:{period_id}}}"
    assert sorted(redis_keys(redis_server, prefix)) == [base.encode(), f"{base}:r".encode()]
    assert redis_server.hgetall(base) == {b"spent": b"1000000000", b"reserved": b"1000000000"}
    expected = ends.timestamp() + KEY_MARGIN_S - now
    for key in (base, f"{base}:r"):
        ttl = redis_server.ttl(key)
        assert expected - 30 <= ttl <= expected + 1, (key, ttl, expected)


# --- budgets: Redis down -------------------------------------------------------------------------------------------
def test_redis_down_fails_closed_fast_for_budgeted_tenants_only(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    acme, beta = Tenant("acme", 10.0, "month"), Tenant("beta")

    async def scenario() -> None:
        led = BudgetLedger(url, prefix="tierwise:test:down")
        try:
            t0 = time.perf_counter()
            with pytest.raises(BudgetUnavailable) as info:
                await led.reserve(acme, 1.0)
            assert time.perf_counter() - t0 < 1.0
            message = str(info.value)
            assert "budget store (Redis at 127.0.0.1:" in message and "fail-closed" in message
            assert "tenant 'acme' has a budget" in message and "hunter2" not in message
            assert info.value.retry_after_s >= 1
            # within down_s, no new attempt: refused at once
            t0 = time.perf_counter()
            with pytest.raises(BudgetUnavailable, match="failed moments ago"):
                await led.reserve(acme, 1.0)
            assert time.perf_counter() - t0 < 0.05
            # a tenant without a budget never touches Redis
            r = await led.reserve(beta, 1.0)
            assert not r.recorded
            await led.settle(r, 1.0)
            assert await led.spent(beta) == 0.0 and await led.usage(beta) is None
        finally:
            await led.aclose()

    with caplog.at_level("WARNING", logger="tierwise.gateway.budgets"):
        run(scenario())
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "refusing budgeted tenants for 1s" in warnings[0], warnings  # once per outage
    assert "hunter2" not in warnings[0]


def test_unresponsive_redis_times_out() -> None:
    """A Redis that accepts connections but never answers costs one timeout, then BudgetUnavailable."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)  # never accepted: the kernel completes the handshake, nobody answers
        port = server.getsockname()[1]

        async def scenario() -> float:
            led = BudgetLedger(f"redis://127.0.0.1:{port}/0", prefix="tierwise:test:mute", timeout_s=0.3)
            try:
                t0 = time.perf_counter()
                with pytest.raises(BudgetUnavailable, match="Timeout"):
                    await led.reserve(Tenant("acme", 1.0, "day"), 0.1)
                return time.perf_counter() - t0
            finally:
                await led.aclose()

        elapsed = run(scenario())
    assert 0.25 <= elapsed < 1.5, elapsed


def test_fail_open_admits_unmetered_and_recovers(redis_server: redis.Redis, prefix: str) -> None:
    acme = Tenant("acme", 1.0, "day")

    async def scenario() -> None:
        down = BudgetLedger(f"redis://127.0.0.1:{free_port()}/0", prefix=prefix, fail_open=True)
        try:
            r = await down.reserve(acme, 5.0)  # above the budget, and admitted: nothing can meter it
            assert not r.recorded and r.tenant == "acme"
            await down.settle(r, 5.0)  # a no-op: nowhere to book it
            with pytest.raises(BudgetUnavailable):  # reading the books still says Redis is down
                await down.usage(acme)
        finally:
            await down.aclose()
        # a ledger that comes back up (down_s passed) meters again
        led = BudgetLedger(REDIS_URL, prefix=prefix, fail_open=True, down_s=0.05)
        try:
            led._down_until = time.monotonic() + 0.05
            await asyncio.sleep(0.06)
            r = await led.reserve(acme, 1.0)
            assert r.recorded
            with pytest.raises(BudgetExceeded):
                await led.reserve(acme, 1.0)
        finally:
            await led.aclose()

    run(scenario())
    assert redis_keys(redis_server, prefix)


def test_memory_ledger_needs_no_redis() -> None:
    led = BudgetLedger(None)
    assert not led.shared

    async def scenario() -> None:
        r = await led.reserve(Tenant("acme", 1.0, "day"), 1.0)
        assert r.recorded
        with pytest.raises(BudgetExceeded):
            await led.reserve(Tenant("acme", 1.0, "day"), 1.0)
        await led.aclose()

    run(scenario())


# --- metrics labels ------------------------------------------------------------------------------------------------
def test_tenant_labels_bound_cardinality() -> None:
    labels = TenantLabels(limit=3)
    assert [labels.label(t) for t in ("a", "b", "a", "c", "d", "e", "b")] == ["a", "b", "a", "c", "other", "other", "b"]
    assert labels.label(None) == "" and labels.label("") == ""
    assert len(labels) == 3
    flood = TenantLabels()
    assert len({flood.label(f"tenant-{i}") for i in range(5000)}) == 101  # 100 names and "other"
    assert flood.label("tenant-99") == "tenant-99" and flood.label("tenant-100") == "other"
    preset = TenantLabels(limit=2, preset=["acme", "beta"])
    assert preset.label("zeta") == "other" and preset.label("beta") == "beta"
