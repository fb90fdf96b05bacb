"""The gateway's response cache: exact matches in process (L1) and in Redis (L2), semantic matches opt-in.

What the gateway does with it, per chat completion::

    policy = cache_policy(body, headers, enabled=cache.config.enabled, opt_in=..., opt_out=...)
    key = exact_key(body, resolved, tenant)                      # 64 hex chars
    scope = semantic_scope(body, resolved, tenant, space=...)   # None: no user turn
    hit = await cache.lookup(key, tenant, scope=scope, vector=embedding, semantic_ok=...) if policy.lookup else None
    ... on a hit: answer hit.completion (or replay_sse(hit.completion, model)) with cost 0 ...
    ... on a miss: call the upstream, then if policy.store: await cache.put(key, tenant, completion, meta=...)

Levels. L1 is an LRU dict of this process, bounded by entries and bytes. L2 is Redis (``redis_url``), shared by
every replica; an L2 hit refills L1. Either may be off (``l1_entries=0``; no ``redis_url``). With Redis on, L1 keeps
an entry at most ``l1_ttl_s``: that bounds how long another replica may still serve an entry purged elsewhere.

Correctness. Only deterministic requests are cached by default (``temperature == 0`` given explicitly, ``n`` absent
or 1) or those that opt in; ``Cache-Control: no-store`` bypasses the cache, ``no-cache`` skips the lookup but stores
the fresh answer. The exact key hashes everything in the body that can change the answer (every message, tools,
response format, every sampling parameter; not ``stream``, ``stream_options``, ``user``, ``metadata``, ``store``,
``tierwise``), the model resolution and the tenant. Only finished answers are stored (every choice ended with
``stop`` or ``tool_calls``): never errors, truncated (``length``) or filtered answers.

Semantic matching (``semantic=True`` and the caller's ``semantic_ok``) returns an answer cached for another prompt
whose embedding has cosine similarity >= ``semantic_min_similarity`` with this one, within the same *scope*: the
same body except the last user turn's text (so same tenant, model resolution, system prompt, earlier turns, tools,
parameters and embedding space). Each scope keeps its ``semantic_per_scope`` most recent vectors; lookups are a
brute-force dot product.

Tenants. The tenant is part of every key, and every Redis key starts ``<prefix>:<sha256(tenant)>:``, so one tenant's
entries are never returned to another and :meth:`ResponseCache.purge_tenant` is one SCAN. Redis keys hold hashes
only: never a tenant name, a prompt or an answer.

Failures. Redis errors never fail a request: the operation counts a ``redis_error`` event, logs the error's type
(no text), is treated as a miss (or a store that did not happen), and Redis is left alone for ``redis_backoff_s``
so a dead Redis costs at most one ``redis_timeout_s`` per back-off period. Nothing here logs prompts or answers.

Hits. A hit's completion has a fresh ``id`` and ``created``; its ``usage`` is the original call's. The entry's
``meta`` is what the caller stored with it (e.g. the original ``cost_usd`` and tier): a hit costs nothing, and the
original cost is what the hit saved.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("tierwise.gateway.cache")

FORMAT = "tierwise-cache-v1"
"""Hashed into every key and written in every entry: a new key recipe or entry format starts from an empty cache."""
ANSWER_NEUTRAL = frozenset({"stream", "stream_options", "user", "metadata", "store", "tierwise"})
"""Top-level body fields that do not change the answer (left out of the keys). Everything else is in."""
FINISHED = frozenset({"stop", "tool_calls"})
"""The ``finish_reason`` values of an answer that may be cached (``length``, ``content_filter``, ... may not)."""
LAST_USER_TEXT = "\x00tierwise:last-user-text\x00"
"""Stands for the last user turn's text in a semantic scope (cannot occur in a real message: NUL)."""

CacheEvent = Literal["hit_l1", "hit_l2", "hit_semantic", "miss", "store", "redis_error"]
CacheStatus = Literal["hit-l1", "hit-l2", "hit-semantic", "miss", "bypass", "off"]
"""Values of the ``x-tierwise-cache`` response header."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")
_L1_OVERHEAD = 256  # bytes counted per L1 entry beyond its data: the dict slot, the entry object, the key
_SEMANTIC_CANDIDATES = 4  # L2 entries fetched for the best semantic matches (older ones may have expired)
T = TypeVar("T")


class CacheError(Exception):
    """An operation that must not fail silently failed (a purge that could not reach Redis)."""


@dataclass(frozen=True)
class CacheConfig:
    """Sizes, lifetimes and where L2 lives. Defaults: L1 only, 1 day, exact matches only."""

    l1_entries: int = 10_000
    """Most entries kept in process (0: no L1)."""
    l1_bytes: int = 256 * 1024 * 1024
    """Most bytes kept in process (entries' JSON and vectors, plus a fixed overhead per entry)."""
    ttl_s: float = 86_400.0
    """Lifetime of an entry."""
    max_entry_bytes: int = 1024 * 1024
    """Largest cached answer (its stored JSON, with metadata); a larger one is not cached."""
    redis_url: str | None = None
    """``redis://``, ``rediss://`` or ``unix://`` URL of L2; None: no L2."""
    redis_prefix: str = "tierwise:cache"
    """First part of every Redis key (letters, digits, ``_.:-``)."""
    redis_timeout_s: float = 0.25
    """Longest one Redis operation may take (connecting included) before it counts as a miss."""
    redis_backoff_s: float = 5.0
    """After a Redis failure, how long Redis is not tried (every lookup is an L1 lookup meanwhile)."""
    l1_ttl_s: float = 60.0
    """With Redis on: longest an entry stays in L1 (how long other replicas may serve an entry after a purge)."""
    semantic: bool = False
    """Serve answers cached for similar prompts (see the module doc)."""
    semantic_min_similarity: float = 0.97
    """Lowest cosine similarity of a semantic match."""
    semantic_per_scope: int = 256
    """Most recent vectors kept per semantic scope (each level)."""

    def __post_init__(self) -> None:
        problems = []
        for name, low in (("l1_entries", 0), ("l1_bytes", 0), ("max_entry_bytes", 1), ("semantic_per_scope", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("ttl_s", "redis_timeout_s", "l1_ttl_s"):
            value = getattr(self, name)
            if not _number(value) or not 0 < value < float("inf"):
                problems.append(f"{name} must be a finite number > 0, got {value!r}")
        if not _number(self.redis_backoff_s) or not 0 <= self.redis_backoff_s < float("inf"):
            problems.append(f"redis_backoff_s must be a finite number >= 0, got {self.redis_backoff_s!r}")
        if not _number(self.semantic_min_similarity) or not 0 < self.semantic_min_similarity <= 1:
            problems.append(f"semantic_min_similarity must be in (0, 1], got {self.semantic_min_similarity!r}")
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            # the URL itself is not echoed: it may hold a password
            problems.append("redis_url must start with redis://, rediss:// or unix://")
        if not _PREFIX.fullmatch(self.redis_prefix):
            problems.append(f"redis_prefix must be 1-100 of letters, digits and _.:- , got {self.redis_prefix!r}")
        if problems:
            raise ValueError("invalid cache config: " + "; ".join(problems))

    @property
    def l1_on(self) -> bool:
        return self.l1_entries > 0 and self.l1_bytes > 0

    @property
    def enabled(self) -> bool:
        """Whether any level is on (else every request is ``off``)."""
        return self.l1_on or self.redis_url is not None


# --- policy and keys ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CachePolicy:
    """What the cache may do for one request, and why (``reason``: for logs and tests).

    reasons: ``off`` (no level configured), ``opt_out``, ``no_store`` (Cache-Control), ``temperature`` (not an
    explicit 0), ``n`` (more than one choice), ``no_cache`` (Cache-Control: store the fresh answer, no lookup),
    ``opt_in``, ``deterministic``.
    """

    lookup: bool
    store: bool
    reason: str

    @property
    def status(self) -> CacheStatus:
        """The ``x-tierwise-cache`` header before the lookup: ``off``, ``bypass``, or ``miss`` (a hit replaces it
        with :attr:`CacheHit.status`)."""
        if self.reason == "off":
            return "off"
        return "miss" if self.lookup else "bypass"


def cache_policy(
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    enabled: bool = True,
    opt_in: bool = False,
    opt_out: bool = False,
) -> CachePolicy:
    """Decide whether a chat completion request may be answered from / stored in the cache.

    ``enabled``: the cache is configured (:attr:`CacheConfig.enabled`). ``opt_in`` / ``opt_out``: the request's
    own choice (``tierwise.cache`` true / false); opting in caches a non-deterministic request too.
    """
    if not enabled:
        return CachePolicy(False, False, "off")
    if opt_out:
        return CachePolicy(False, False, "opt_out")
    directives = _cache_directives(headers)
    if "no-store" in directives:
        return CachePolicy(False, False, "no_store")
    if opt_in:
        reason = "opt_in"
    else:
        t, n = body.get("temperature"), body.get("n")
        if not (_number(t) and t == 0):  # absent is OpenAI's default of 1, not deterministic
            return CachePolicy(False, False, "temperature")
        if n is not None and not (_number(n) and n == 1):
            return CachePolicy(False, False, "n")
        reason = "deterministic"
    if "no-cache" in directives:
        return CachePolicy(False, True, "no_cache")
    return CachePolicy(True, True, reason)


def exact_key(body: Mapping[str, Any], resolved: str, tenant: str | None) -> str:
    """SHA-256 (hex) of what determines the answer: the body but :data:`ANSWER_NEUTRAL` fields (null fields count as
    absent), ``resolved`` (the model resolution: everything outside the body that picks the answering model, e.g.
    ``routed:tierwise:q0.95@<router version>|role=...`` or ``model:demo-small``) and the tenant."""
    return _digest({"format": FORMAT, "kind": "exact", "resolved": resolved, "tenant": tenant,
                    "body": _answer_fields(body)})


def semantic_scope(body: Mapping[str, Any], resolved: str, tenant: str | None, *, space: str) -> str | None:
    """SHA-256 (hex) of the exact key's inputs with the last user turn's text left out, plus ``space``: the identity
    of the embedding space the vectors come from (e.g. the router bundle's version), so vectors of two encoders are
    never compared. None when the body has no user turn (no semantic match possible).

    Non-text parts of the last user turn (images, audio, files) stay in the scope: only its text may differ."""
    fields = _answer_fields(body)
    messages = fields.get("messages")
    if not isinstance(messages, list):
        return None
    last = next((i for i in range(len(messages) - 1, -1, -1)
                 if isinstance(messages[i], dict) and messages[i].get("role") == "user"), None)
    if last is None:
        return None
    turn = dict(messages[last])
    content = turn.get("content")
    if isinstance(content, list):
        turn["content"] = [
            {**p, "text": LAST_USER_TEXT} if isinstance(p, dict) and p.get("type") == "text" else p for p in content
        ]
    else:
        turn["content"] = LAST_USER_TEXT
    fields["messages"] = [*messages[:last], turn, *messages[last + 1:]]
    return _digest({"format": FORMAT, "kind": "scope", "space": space, "resolved": resolved, "tenant": tenant,
                    "body": fields})


def uncacheable(completion: Any) -> str | None:
    """Why ``completion`` must not be cached (None: it may): not a chat.completion, an error, no choices, or a
    choice that did not finish with ``stop`` / ``tool_calls``."""
    if not isinstance(completion, dict):
        return "not an object"
    if "error" in completion:
        return "an error"
    if completion.get("object", "chat.completion") != "chat.completion":
        return "not a chat.completion"
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no choices"
    for c in choices:
        if not isinstance(c, dict) or not isinstance(c.get("message"), dict):
            return "a choice without a message"
        if c.get("finish_reason") not in FINISHED:
            return "an unfinished choice"
    return None


# --- the cache ---------------------------------------------------------------------------------------------------
@dataclass
class CacheHit:
    """A cached answer: ``completion`` (fresh ``id`` and ``created``, the original ``usage``; ``model`` as stored:
    set it), the level it came from, the ``meta`` stored with it, the cosine similarity of a semantic match and the
    entry's age."""

    completion: dict[str, Any]
    level: Literal["l1", "l2", "semantic"]
    meta: dict[str, Any]
    similarity: float | None = None
    age_s: float = 0.0

    @property
    def status(self) -> CacheStatus:
        """The ``x-tierwise-cache`` header value."""
        return "hit-l1" if self.level == "l1" else "hit-l2" if self.level == "l2" else "hit-semantic"


@dataclass(eq=False)
class _Entry:
    data: bytes  # the stored JSON (see _encode)
    expires: float  # time.time()
    tag: str  # tenant tag
    scope: str | None  # "<tag>:<scope>" when indexed for semantic matches
    vector: np.ndarray | None
    size: int


class ResponseCache:
    """The two-level response cache of one gateway worker (async; all L1 work is synchronous, so it is safe on one
    event loop without locks).

    ``on_event`` is called with a :data:`CacheEvent` name: ``hit_l1`` / ``hit_l2`` (:meth:`get`), ``hit_semantic``
    (:meth:`get_semantic`), ``miss`` (:meth:`lookup` finding nothing), ``store`` (:meth:`put` storing at some
    level), ``redis_error`` (each failed Redis operation).
    """

    def __init__(self, config: CacheConfig, *, on_event: Callable[[str], None] | None = None) -> None:
        self.config = config
        self._on_event = on_event
        self._l1: OrderedDict[str, _Entry] = OrderedDict()  # "<tag>:<key>" -> entry, least recently used first
        self._l1_size = 0
        self._scopes: dict[str, OrderedDict[str, None]] = {}  # "<tag>:<scope>" -> L1 keys, oldest first
        self._down_until = 0.0  # time.monotonic() before which Redis is not tried
        self._redis: Redis | None = None
        if config.redis_url is not None:
            t = config.redis_timeout_s
            # No client-side retries: one failed attempt is a miss (retries would multiply the timeout).
            self._redis = Redis.from_url(
                config.redis_url, socket_timeout=t, socket_connect_timeout=t, retry=Retry(NoBackoff(), 0),
                decode_responses=False,
            )

    # --- public API --------------------------------------------------------------------------------------------
    async def lookup(
        self,
        key: str,
        tenant: str | None,
        *,
        scope: str | None = None,
        vector: np.ndarray | None = None,
        semantic_ok: bool = False,
    ) -> CacheHit | None:
        """:meth:`get`, then (when ``semantic_ok`` and the config's ``semantic``) :meth:`get_semantic`; counts one
        ``miss`` when both find nothing. ``semantic_ok``: the caller's verdict that ``vector`` stands for the whole
        last user turn (e.g. the prompt fits the encoder's window)."""
        hit = await self.get(key, tenant)
        if hit is None and semantic_ok and scope is not None and vector is not None:
            hit = await self.get_semantic(scope, vector, tenant)
        if hit is None:
            self._emit("miss")
        return hit

    async def get(self, key: str, tenant: str | None) -> CacheHit | None:
        """The entry stored under exact ``key`` for ``tenant``: L1, then L2 (refilling L1)."""
        _check_hash(key, "key")
        tag, now = _tenant_tag(tenant), time.time()
        entry = self._l1_get(f"{tag}:{key}", now)
        if entry is not None:
            found = _hit(entry.data, "l1", now)
            if found is not None:
                self._emit("hit_l1")
                return found[0]
            self._l1_remove(f"{tag}:{key}")
        if self._redis is None:
            return None
        ok, data = await self._call(lambda r: r.get(self._rkey(tag, "e", key)))
        if not ok or not isinstance(data, bytes):
            return None
        found = _hit(data, "l2", now)
        if found is None:
            return None
        self._l1_put(f"{tag}:{key}", data, tag, self._l1_expiry(now, found[1]), None, None)
        self._emit("hit_l2")
        return found[0]

    async def get_semantic(self, scope: str, vector: np.ndarray, tenant: str | None) -> CacheHit | None:
        """The most similar entry indexed under ``scope`` for ``tenant`` if its similarity with ``vector`` (the
        request's embedding) is at least ``semantic_min_similarity``: L1's index, then L2's. None when the config's
        ``semantic`` is off or the vector is zero / not finite."""
        if not self.config.semantic:
            return None
        _check_hash(scope, "scope")
        v = _unit(vector)
        if v is None:
            return None
        tag, now = _tenant_tag(tenant), time.time()
        hit = self._l1_semantic(f"{tag}:{scope}", v, now)
        if hit is None and self._redis is not None:
            hit = await self._l2_semantic(tag, scope, v, now)
        if hit is not None:
            self._emit("hit_semantic")
        return hit

    async def put(
        self,
        key: str,
        tenant: str | None,
        completion: dict[str, Any],
        *,
        meta: Mapping[str, Any],
        scope: str | None = None,
        vector: np.ndarray | None = None,
        semantic_ok: bool = False,
    ) -> bool:
        """Store a finished answer (see :func:`uncacheable`) under ``key`` for ``tenant`` in L1 and L2, and index
        ``vector`` under ``scope`` for semantic matches when ``semantic_ok`` and the config's ``semantic``. ``meta``
        (JSON, no user text) comes back with every hit: put the original ``cost_usd`` and tier there. True when
        stored at some level; False when refused (unfinished, too big) or no level took it."""
        _check_hash(key, "key")
        problem = uncacheable(completion)
        if problem is not None:
            log.debug("answer not cached: %s", problem)
            return False
        now = time.time()
        data = _encode(completion, meta, now, self.config.ttl_s)
        if len(data) > self.config.max_entry_bytes:
            log.debug("answer not cached: %d bytes is over max_entry_bytes", len(data))
            return False
        v: np.ndarray | None = None
        if self.config.semantic and semantic_ok and scope is not None and vector is not None:
            _check_hash(scope, "scope")
            v = _unit(vector)
        tag = _tenant_tag(tenant)
        indexed = None if v is None or scope is None else f"{tag}:{scope}"
        stored = self._l1_put(f"{tag}:{key}", data, tag, self._l1_expiry(now, now + self.config.ttl_s), indexed, v)
        if self._redis is not None:
            ttl_ms = max(1, round(self.config.ttl_s * 1000))
            ekey = self._rkey(tag, "e", key)
            skey = None if v is None or scope is None else self._rkey(tag, "s", scope)

            async def write(r: Redis) -> None:
                async with r.pipeline(transaction=True) as p:
                    p.set(ekey, data, px=ttl_ms)
                    if skey is not None and v is not None:
                        p.lpush(skey, key.encode("ascii") + v.tobytes())
                        p.ltrim(skey, 0, self.config.semantic_per_scope - 1)
                        p.pexpire(skey, ttl_ms)
                    await p.execute()

            ok, _ = await self._call(write)
            stored = stored or ok
        if stored:
            self._emit("store")
        return stored

    async def purge_tenant(self, tenant: str | None) -> int:
        """Remove every entry of ``tenant`` from L1 and L2; the number of distinct answers removed. Raises
        :class:`CacheError` when Redis cannot be reached (L1 is purged first either way). Other replicas' L1 copies
        live at most ``l1_ttl_s`` more; an answer being stored while this runs may survive it."""
        tag = _tenant_tag(tenant)
        removed: set[str] = set()
        for k in [k for k, e in self._l1.items() if e.tag == tag]:
            self._l1_remove(k)
            removed.add(k.split(":", 1)[1])
        if self._redis is None:
            return len(removed)
        exact = f"{self.config.redis_prefix}:{tag}:e:"
        try:
            batch: list[bytes] = []
            async for name in self._redis.scan_iter(match=f"{self.config.redis_prefix}:{tag}:*", count=1000):
                batch.append(name)
                text = name.decode("ascii", "replace")
                if text.startswith(exact):
                    removed.add(text[len(exact):])
                if len(batch) >= 1000:
                    await self._redis.unlink(*batch)
                    batch = []
            if batch:
                await self._redis.unlink(*batch)
        except (RedisError, OSError, TimeoutError) as exc:
            self._emit("redis_error")
            log.error("cache purge could not reach redis (%s)", type(exc).__name__)
            raise CacheError(f"cache purge could not reach redis ({type(exc).__name__}); L1 was purged") from None
        return len(removed)

    def stats(self) -> dict[str, int]:
        """L1's size (entries, bytes) and number of semantic scopes, for gauges and tests."""
        return {"l1_entries": len(self._l1), "l1_bytes": self._l1_size, "l1_scopes": len(self._scopes)}

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    # --- L1 ----------------------------------------------------------------------------------------------------
    def _l1_expiry(self, now: float, expires: float) -> float:
        if self._redis is not None:  # see l1_ttl_s: bounds a purge's reach into other replicas
            return min(expires, now + self.config.l1_ttl_s)
        return expires

    def _l1_get(self, k: str, now: float, touch: bool = True) -> _Entry | None:
        entry = self._l1.get(k)
        if entry is None:
            return None
        if entry.expires <= now:
            self._l1_remove(k)
            return None
        if touch:
            self._l1.move_to_end(k)
        return entry

    def _l1_put(
        self, k: str, data: bytes, tag: str, expires: float, scope: str | None, vector: np.ndarray | None
    ) -> bool:
        cfg = self.config
        size = len(data) + (0 if vector is None else vector.nbytes) + _L1_OVERHEAD
        if not cfg.l1_on or size > cfg.l1_bytes:
            return False
        self._l1_remove(k)
        self._l1[k] = _Entry(data, expires, tag, scope, vector, size)
        self._l1_size += size
        if scope is not None and vector is not None:
            index = self._scopes.setdefault(scope, OrderedDict())
            index[k] = None
            while len(index) > cfg.semantic_per_scope:
                index.popitem(last=False)  # out of the index only: the answer stays for exact matches
        while len(self._l1) > cfg.l1_entries or self._l1_size > cfg.l1_bytes:
            self._l1_remove(next(iter(self._l1)))
        return k in self._l1

    def _l1_remove(self, k: str) -> None:
        entry = self._l1.pop(k, None)
        if entry is None:
            return
        self._l1_size -= entry.size
        if entry.scope is not None:
            index = self._scopes.get(entry.scope)
            if index is not None:
                index.pop(k, None)
                if not index:
                    del self._scopes[entry.scope]

    def _l1_semantic(self, scope: str, v: np.ndarray, now: float) -> CacheHit | None:
        index = self._scopes.get(scope)
        if not index:
            return None
        keys: list[str] = []
        rows: list[np.ndarray] = []
        for k in list(index):
            entry = self._l1_get(k, now, touch=False)
            if entry is not None and entry.vector is not None and entry.vector.shape == v.shape:
                keys.append(k)
                rows.append(entry.vector)
        if not rows:
            return None
        sims = np.stack(rows) @ v
        best = int(np.argmax(sims))
        similarity = float(sims[best])
        if similarity < self.config.semantic_min_similarity:
            return None
        entry = self._l1_get(keys[best], now)
        if entry is None:
            return None
        found = _hit(entry.data, "semantic", now)
        if found is None:
            return None
        found[0].similarity = similarity
        return found[0]

    # --- L2 ----------------------------------------------------------------------------------------------------
    def _rkey(self, tag: str, kind: Literal["e", "s"], digest: str) -> str:
        return f"{self.config.redis_prefix}:{tag}:{kind}:{digest}"

    async def _l2_semantic(self, tag: str, scope: str, v: np.ndarray, now: float) -> CacheHit | None:
        skey = self._rkey(tag, "s", scope)
        n = self.config.semantic_per_scope
        ok, items = await self._call(lambda r: r.lrange(skey, 0, n - 1))
        if not ok or not items:
            return None
        keys: list[str] = []
        rows: list[np.ndarray] = []
        seen: set[str] = set()
        for item in items:  # newest first; a key stored twice counts once
            if not isinstance(item, bytes) or len(item) != 64 + v.nbytes:
                continue  # another embedding size (or not ours): never compared
            key = item[:64].decode("ascii", "replace")
            if key in seen or not _HEX64.fullmatch(key):
                continue
            seen.add(key)
            keys.append(key)
            rows.append(np.frombuffer(item[64:], dtype="<f4"))
        if not rows:
            return None
        sims = np.stack(rows) @ v
        order = [int(i) for i in np.argsort(-sims)[:_SEMANTIC_CANDIDATES]
                 if sims[i] >= self.config.semantic_min_similarity]
        if not order:
            return None
        ekeys = [self._rkey(tag, "e", keys[i]) for i in order]
        ok, values = await self._call(lambda r: r.mget(ekeys))
        if not ok or not values:
            return None
        for i, data in zip(order, values, strict=False):
            if not isinstance(data, bytes):
                continue  # expired since it was indexed
            found = _hit(data, "semantic", now)
            if found is None:
                continue
            hit, expires = found
            hit.similarity = float(sims[i])
            self._l1_put(f"{tag}:{keys[i]}", data, tag, self._l1_expiry(now, expires), f"{tag}:{scope}",
                         rows[i].copy())
            return hit
        return None

    async def _call(self, op: Callable[[Redis], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run one Redis operation within ``redis_timeout_s``: (True, result), or (False, None) on any failure or
        during the back-off after one."""
        if self._redis is None or time.monotonic() < self._down_until:
            return False, None
        try:
            async with asyncio.timeout(self.config.redis_timeout_s):
                return True, await op(self._redis)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self.config.redis_backoff_s
            self._emit("redis_error")
            # the type only: a message could carry the URL (a password) or, in principle, data
            log.warning("redis cache failed (%s): not used for %.3g s", type(exc).__name__,
                        self.config.redis_backoff_s)
            return False, None

    def _emit(self, event: CacheEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)


# --- SSE replay and stream assembly ------------------------------------------------------------------------------
_DELTA_KEYS = ("role", "content", "refusal", "tool_calls", "function_call")


def replay_sse(completion: Mapping[str, Any], model: str, *, include_usage: bool = False) -> list[bytes]:
    """The server-sent events of a streamed ``chat.completion.chunk`` answer equal to ``completion`` (a cached
    non-streaming answer): per choice one chunk with the whole message (content, refusal, tool calls, logprobs) and
    one with its ``finish_reason``; then, when ``include_usage`` (the client's ``stream_options.include_usage``),
    a chunk with no choices and the usage (the other chunks then carry ``usage: null``, as OpenAI sends them); then
    ``data: [DONE]``."""
    base: dict[str, Any] = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": model,
        "system_fingerprint": completion.get("system_fingerprint"),
    }
    if completion.get("service_tier") is not None:
        base["service_tier"] = completion["service_tier"]

    def event(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        chunk = {**base, "choices": choices}
        if include_usage:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    out: list[bytes] = []
    for position, choice in enumerate(completion.get("choices") or []):
        index = choice.get("index", position)
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("refusal") is not None:
            delta["refusal"] = message["refusal"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(message["tool_calls"])]
        if message.get("function_call") is not None:
            delta["function_call"] = message["function_call"]
        delta.update({k: v for k, v in message.items() if k not in _DELTA_KEYS and v is not None})
        out.append(event([{"index": index, "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None}]))
        finish = choice.get("finish_reason")
        out.append(event([{"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}]))
    if include_usage and isinstance(completion.get("usage"), dict):
        out.append(event([], completion["usage"]))
    out.append(b"data: [DONE]\n\n")
    return out


class StreamAssembler:
    """Rebuilds the ``chat.completion`` a stream of ``chat.completion.chunk`` objects spells, so a streamed answer
    can be cached: :meth:`add` every chunk (parsed JSON), then :meth:`result`. Gives up (``result()`` is None)
    once the text exceeds ``max_bytes``, so a long stream is not held in memory twice."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.overflow = False
        self._size = 0
        self._head: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: Mapping[str, Any], size: int | None = None) -> None:
        """Take one chunk; ``size``: its payload's length when known (else it is measured)."""
        if self.overflow:
            return
        # the chunk's JSON length: an upper bound of what it adds to the answer
        self._size += size if size is not None else len(json.dumps(chunk, separators=(",", ":")))
        if self._size > self.max_bytes:
            self.overflow = True
            self._choices.clear()
            return
        for k in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if k not in self._head and chunk.get(k) is not None:
                self._head[k] = chunk[k]
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for c in chunk.get("choices") or []:
            if not isinstance(c, dict) or not isinstance(c.get("index"), int):
                continue
            state = self._choices.setdefault(c["index"], {"text": [], "refusal": [], "tools": {}, "logprobs": {},
                                                          "role": None, "finish_reason": None, "extra": {}})
            self._add_delta(state, c.get("delta") or {})
            logprobs = c.get("logprobs")
            if isinstance(logprobs, dict):
                for kind, items in logprobs.items():
                    if isinstance(items, list):
                        state["logprobs"].setdefault(kind, []).extend(items)
            if c.get("finish_reason") is not None:
                state["finish_reason"] = c["finish_reason"]

    @staticmethod
    def _add_delta(state: dict[str, Any], delta: Mapping[str, Any]) -> None:
        if delta.get("role"):
            state["role"] = delta["role"]
        if isinstance(delta.get("content"), str):
            state["text"].append(delta["content"])
        if isinstance(delta.get("refusal"), str):
            state["refusal"].append(delta["refusal"])
        for tc in delta.get("tool_calls") or []:
            if not isinstance(tc, dict):
                continue
            call = state["tools"].setdefault(tc.get("index", len(state["tools"])), {"fn": {}, "args": []})
            for k in ("id", "type"):
                if tc.get(k) is not None:
                    call[k] = tc[k]
            fn = tc.get("function") or {}
            if fn.get("name"):
                call["fn"]["name"] = fn["name"]
            if isinstance(fn.get("arguments"), str):
                call["args"].append(fn["arguments"])
        for k, v in delta.items():
            if k not in _DELTA_KEYS and v is not None:
                state["extra"][k] = v

    def result(self) -> dict[str, Any] | None:
        """The completion, or None: overflowed, no choice, or a choice without a ``finish_reason`` (a cut
        stream). Whether it may be cached is still :func:`uncacheable`'s call (``put`` checks)."""
        if self.overflow or not self._choices or any(s["finish_reason"] is None for s in self._choices.values()):
            return None
        choices = []
        for index in sorted(self._choices):
            s = self._choices[index]
            message: dict[str, Any] = {"role": s["role"] or "assistant",
                                       "content": "".join(s["text"]) if s["text"] else None,
                                       "refusal": "".join(s["refusal"]) if s["refusal"] else None}
            if s["tools"]:
                message["tool_calls"] = [
                    {"id": t.get("id"), "type": t.get("type", "function"),
                     "function": {"name": t["fn"].get("name"), "arguments": "".join(t["args"])}}
                    for _, t in sorted(s["tools"].items())
                ]
            message.update(s["extra"])
            choices.append({"index": index, "message": message, "logprobs": s["logprobs"] or None,
                            "finish_reason": s["finish_reason"]})
        out: dict[str, Any] = {"id": self._head.get("id"), "object": "chat.completion",
                               "created": self._head.get("created"), "model": self._head.get("model"),
                               "system_fingerprint": self._head.get("system_fingerprint"), "choices": choices}
        if "service_tier" in self._head:
            out["service_tier"] = self._head["service_tier"]
        if self._usage is not None:
            out["usage"] = self._usage
        return out


# --- helpers -----------------------------------------------------------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cache_directives(headers: Mapping[str, str]) -> set[str]:
    """Directive names of the request's Cache-Control (and legacy Pragma) headers, lower case."""
    out: set[str] = set()
    for name, value in headers.items():
        if name.lower() in ("cache-control", "pragma") and isinstance(value, str):
            out.update(part.split("=", 1)[0].strip().lower() for part in value.split(","))
    return out


def _canonical(value: Any) -> Any:
    """``1.0`` and ``1`` hash alike (the same JSON number); containers recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _answer_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body's fields that may change the answer (a null field is OpenAI's default, as if absent)."""
    return {k: _canonical(v) for k, v in body.items() if k not in ANSWER_NEUTRAL and v is not None}


def _digest(obj: Any) -> str:
    # ASCII JSON: a lone surrogate in a string still hashes (UTF-8 would refuse it)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _tenant_tag(tenant: str | None) -> str:
    """The tenant as it appears in keys: a hash (no tenant and the empty tenant differ)."""
    return hashlib.sha256(b"\x00" if tenant is None else b"t:" + tenant.encode("utf-8", "surrogatepass")).hexdigest()


def _check_hash(value: str, name: str) -> None:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError(f"cache {name} must be 64 lower-case hex characters (from exact_key / semantic_scope)")


def _unit(vector: Any) -> np.ndarray | None:
    """``vector`` as a unit float32 row (a [1, dim] array is accepted); None when zero or not finite."""
    v = np.asarray(vector, dtype=np.float32)
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"cache vector must be a 1-D embedding, got shape {v.shape}")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm < 1e-6:
        return None
    return np.ascontiguousarray(v / norm, dtype="<f4")


def _encode(completion: Mapping[str, Any], meta: Mapping[str, Any], now: float, ttl_s: float) -> bytes:
    entry = {"format": FORMAT, "stored": now, "ttl": ttl_s, "meta": dict(meta), "completion": completion}
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(data.decode("utf-8", "surrogatepass"))
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or not isinstance(entry.get("completion"), dict) \
            or not _number(entry.get("stored")) or not _number(entry.get("ttl")):
        return None
    return entry


def _hit(data: bytes, level: Literal["l1", "l2", "semantic"], now: float) -> tuple[CacheHit, float] | None:
    """A :class:`CacheHit` of a stored entry (a fresh copy, with a new id and created) and the entry's expiry
    (``time.time()``); None if unreadable or past its TTL."""
    entry = _decode(data)
    if entry is None:
        log.warning("unreadable cache entry ignored")
        return None
    expires = float(entry["stored"] + entry["ttl"])
    if expires <= now:
        return None
    completion = entry["completion"]
    completion["id"] = f"chatcmpl-{uuid.uuid4().hex}"
    completion["created"] = int(now)
    meta = entry.get("meta")
    hit = CacheHit(completion, level, meta if isinstance(meta, dict) else {}, None, max(0.0, now - entry["stored"]))
    return hit, expires
