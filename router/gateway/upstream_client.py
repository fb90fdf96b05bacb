"""Calls to OpenAI-compatible upstreams: one pooled HTTP client, a concurrency cap and a circuit breaker per upstream.

:meth:`UpstreamClient.complete` makes one non-streaming attempt, :meth:`UpstreamClient.stream` opens a streaming
one; neither retries: the caller walks :meth:`router.gateway.upstreams.UpstreamsConfig.chain` and moves on when an
:class:`UpstreamError` is ``retryable`` (another upstream may succeed), and returns the error otherwise (the request
itself is wrong: the upstream's OpenAI error body is kept in ``.body`` to answer with as is).

=========================  ==========  ======================================================================
failure                    retryable   outcome recorded
=========================  ==========  ======================================================================
connect error / refused    yes         ``connect_error``
timeout / deadline passed  yes         ``timeout``
429, 408, 5xx (and 1xx/3xx) yes        ``http_<status>``
other 4xx                  no          ``http_<status>`` (``.body``: the upstream's error object)
200 that is no completion  yes         ``bad_response`` (not JSON, no choices, an error object, not SSE ...)
circuit open               yes         ``circuit_open`` (no network call was made)
cut after the first event  no          ``stream_broken`` (raised by the stream's iterator)
=========================  ==========  ======================================================================

Every attempt ends in one :class:`Attempt` (upstream, outcome, elapsed ms): on the result, on the error, on the
stream once it ends, and passed to the client's ``on_attempt`` callback (metrics). A stream the caller closes before
its end records ``cancelled``, as does a call whose task is cancelled.

Timeouts: ``timeout_s`` bounds one attempt of :meth:`~UpstreamClient.complete` from the request to the last byte,
and the first event of a stream; after that it is the longest wait for the next event. ``deadline`` (a
:func:`time.monotonic` instant) bounds everything, the wait for a concurrency slot included. A timeout caused by the
caller's deadline (rather than the upstream's own ``timeout_s``) does not count against the upstream's breaker.
``connect_timeout_s`` bounds each TCP connect (TLS handshake included); running out of it is a ``connect_error``.

Transport: one :class:`aiohttp.ClientSession` per client (httpx's async client cost ~10x the CPU per request). What
httpx did by default is kept: no redirects followed, no status raised, gzip/deflate decoded, cookies kept, the CA
bundle from ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` else certifi's, proxies from ``HTTP(S)_PROXY`` / ``ALL_PROXY`` /
``NO_PROXY`` (``.netrc`` is not read), the JSON body compact UTF-8 with NaN refused, SSE lines split as
:meth:`str.splitlines` does. aiohttp's exceptions map onto the table above: refused, DNS, TLS and reset connections,
a cut or malformed answer before the first event -> ``connect_error``; an undecodable (gzip ...) body ->
``bad_response``; no connection within ``connect_timeout_s`` -> ``connect_error``; a read stalled past
``timeout_s`` -> ``timeout``; any of these after a stream's first event -> ``stream_broken``.

Nothing here logs request or answer text: only upstream names, outcomes, status codes and timings.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import math
import os
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NoReturn

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError
from yarl import URL

from router.gateway.upstreams import Upstream, UpstreamsConfig

log = logging.getLogger("tierwise.gateway")

MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""Largest non-streaming body read from an upstream; a bigger one is a ``bad_response``."""
MAX_ERROR_BODY_BYTES = 256 * 1024
"""Largest error body read from an upstream (an OpenAI error object is a few hundred bytes)."""
MAX_POOL_CONNECTIONS = 10_000
KEEPALIVE_S = 5.0
"""How long an idle pooled connection is kept (httpx's default; servers such as uvicorn close theirs after 5 s)."""

Outcome = str
"""``ok``, ``http_<status>``, ``timeout``, ``connect_error``, ``circuit_open``, ``bad_response``, ``stream_broken``
or ``cancelled``."""


@dataclass(frozen=True)
class Attempt:
    """One call to one upstream."""

    upstream: str
    outcome: Outcome
    elapsed_ms: float


# --- errors ------------------------------------------------------------------------------------------------------
class UpstreamError(Exception):
    """A failed attempt. ``retryable``: another upstream may succeed (fall back); else the request is wrong.
    Messages name the upstream and the failure, never the request or the upstream's answer text."""

    outcome: Outcome = "error"

    def __init__(
        self,
        message: str,
        *,
        upstream: str,
        retryable: bool,
        status: int | None = None,
        body: dict[str, Any] | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        super().__init__(message)
        self.upstream = upstream
        self.retryable = retryable
        self.status = status
        self.body = body
        self.outcome = outcome or type(self).outcome
        self.attempt: Attempt | None = None  # set by the client once the attempt is accounted for
        # what the failure says about the upstream: "failure" trips its breaker, "alive" closes it, None neither
        self._verdict: Literal["failure", "alive"] | None = "failure" if retryable else "alive"


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with a non-2xx status (``.status``; ``.body``: its OpenAI error object, or None)."""


class UpstreamTimeout(UpstreamError):
    outcome = "timeout"


class UpstreamConnectError(UpstreamError):
    outcome = "connect_error"


class UpstreamBadResponse(UpstreamError):
    """A 2xx whose body is not a chat completion (or a stream whose first event is not a chunk)."""

    outcome = "bad_response"


class UpstreamUnavailable(UpstreamError):
    """The upstream's circuit breaker is open: failed fast, without a network call."""

    outcome = "circuit_open"


class UpstreamStreamBroken(UpstreamError):
    """The stream failed after its first event: some of the answer may have reached the client, never retry."""

    outcome = "stream_broken"


# --- circuit breaker ---------------------------------------------------------------------------------------------
class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures -> half-open after ``cooldown_s`` (one trial call goes
    through) -> closed on its success, open again (a new cooldown) on its failure.

    Single event loop, no locks. :meth:`admit` returns ``"call"``, ``"trial"`` (this call is the half-open trial) or
    None (refused); every admitted call ends in :meth:`success`, :meth:`failure` or :meth:`abandon`.
    """

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        if self._opened_at is None:
            return "closed"
        if self._trial or self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_in_s(self) -> float:
        """Seconds until the next trial call may go (0 when closed or due)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))

    def admit(self) -> Literal["call", "trial"] | None:
        if self._opened_at is None:
            return "call"
        if self._trial or self._clock() - self._opened_at < self.cooldown_s:
            return None
        self._trial = True
        return "trial"

    def success(self) -> None:
        # any answer proves the upstream serves again, a straggler's from before the breaker opened included
        self._failures = 0
        self._opened_at = None
        self._trial = False

    def failure(self, trial: bool) -> bool:
        """Count a failure; True when it opened the breaker."""
        if trial:
            self._trial = False
        if self._opened_at is not None:
            if trial:
                self._opened_at = self._clock()  # the trial failed: a new cooldown
                return True
            return False  # a straggler started before the breaker opened: no new information
        self._failures += 1
        if self._failures >= self.threshold:
            self._opened_at = self._clock()
            return True
        return False

    def abandon(self, trial: bool) -> None:
        """The call ended without saying anything about the upstream (cancelled, or the deadline ran out)."""
        if trial:
            self._trial = False


# --- results -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpstreamResult:
    """A successful non-streaming attempt."""

    upstream: str
    status: int
    body: dict[str, Any]  # the chat.completion object
    elapsed_s: float
    attempt: Attempt

    @property
    def usage(self) -> dict[str, Any] | None:
        usage = self.body.get("usage")
        return usage if isinstance(usage, dict) else None


class UpstreamStream:
    """An open streaming attempt (status 200, first event received). Iterate it for the raw SSE ``data:`` payloads
    (``str``, without the ``data: `` prefix, ``[DONE]`` included and last); ``usage`` is set when a chunk carries it.

    The forwarded request always asks for ``stream_options.include_usage`` so the real spend is known; the final
    chunk with empty ``choices`` and the ``usage`` is then yielded whether or not the client asked for it:
    ``client_wants_usage`` says whether it did, and the caller forwards that chunk to the client only then.

    The iterator raises :class:`UpstreamStreamBroken` when the connection is cut, the upstream stalls past
    ``timeout_s``, the deadline passes, or the stream ends without ``[DONE]``. The stream holds one of the
    upstream's concurrency slots until it ends: call :meth:`aclose` (or use ``async with``) when abandoning it.
    """

    def __init__(
        self,
        client: UpstreamClient,
        upstream: Upstream,
        response: aiohttp.ClientResponse,
        events: _SSEEvents,
        first: str,
        *,
        start: float,
        deadline: float | None,
        client_wants_usage: bool,
    ) -> None:
        self.upstream = upstream.name
        self.status = response.status
        self.client_wants_usage = client_wants_usage
        self.usage: dict[str, Any] | None = None
        self.attempt: Attempt | None = None  # set when the stream ends
        self.first_event_s = time.monotonic() - start  # time to the first event (TTFT as seen upstream)
        self._client = client
        self._upstream = upstream
        self._response = response
        self._events = events
        self._pending: str | None = first
        self._start = start
        self._deadline = deadline
        self._closed = False
        self._note_usage(first)

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> UpstreamStream:
        return self

    async def __anext__(self) -> str:
        if self._pending is not None:
            first, self._pending = self._pending, None
            return first
        if self._closed:
            raise StopAsyncIteration
        try:
            async with asyncio.timeout(_remaining(self._deadline)):
                payload = await self._events.next()
        except TimeoutError:  # the deadline, or aiohttp's read timeout (timeout_s without a byte)
            await self._broken(f"no event within {self._upstream.timeout_s:g} s or the deadline passed")
        except aiohttp.ClientError as exc:  # cut, reset, undecodable: some of the answer went out already
            await self._broken(f"connection failed ({type(exc).__name__})")
        except BaseException:
            await self.aclose()
            raise
        if payload is None:
            await self._broken("the stream ended without [DONE]")
        if payload == "[DONE]":
            await self._end("ok", verdict="alive")
            return payload
        try:
            chunk = json.loads(payload)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            await self._broken("an event is not a JSON object")
        self._note_usage(payload, chunk)
        return payload

    def _note_usage(self, payload: str, chunk: Any = None) -> None:
        if '"usage"' not in payload:
            return
        if chunk is None:
            try:
                chunk = json.loads(payload)
            except ValueError:
                return
        usage = chunk.get("usage") if isinstance(chunk, dict) else None
        if isinstance(usage, dict):
            self.usage = usage

    async def _broken(self, reason: str) -> NoReturn:
        error = UpstreamStreamBroken(
            f"upstream {self.upstream!r}: stream broken after the first event: {reason}",
            upstream=self.upstream,
            retryable=False,
        )
        error.attempt = await self._end("stream_broken", verdict="failure")
        raise error

    async def _end(self, outcome: Outcome, verdict: Literal["failure", "alive"] | None) -> Attempt:
        self._closed = True
        try:
            # closing a connection that just broke may raise again: the outcome is already known
            with contextlib.suppress(aiohttp.ClientError):
                await self._events.aclose()
        finally:
            self._response.release()  # back to the pool when read to its end, else the connection is closed
            self._client._release_slot(self._upstream)
            # the trial (if any) was settled when the first event arrived
            self.attempt = self._client._account(self._upstream, False, self._start, outcome, verdict)
        return self.attempt

    async def aclose(self) -> None:
        """Stop reading (the client went away): frees the slot; records ``cancelled`` unless already ended."""
        if not self._closed:
            await self._end("cancelled", verdict=None)

    async def __aenter__(self) -> UpstreamStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# --- the client --------------------------------------------------------------------------------------------------
class UpstreamClient:
    """Calls upstreams over one shared, pooled :class:`aiohttp.ClientSession`, created at the first call inside the
    event loop that makes it (the client itself may be built outside any loop); :meth:`aclose` at shutdown. Per
    upstream name: an :class:`asyncio.Semaphore` of ``max_concurrency`` slots and a :class:`CircuitBreaker` set by
    the file's ``circuit_breaker``."""

    def __init__(self, config: UpstreamsConfig, *, on_attempt: Callable[[Attempt], None] | None = None) -> None:
        self._config = config
        self._on_attempt = on_attempt
        # the pool never binds before the per-upstream caps do
        self._pool_size = max(1, min(config.total_concurrency, MAX_POOL_CONNECTIONS))
        self._http: aiohttp.ClientSession | None = None
        self._closed = False
        self._ssl: ssl.SSLContext | None = None
        self._targets: dict[Upstream, _Target] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._in_flight: dict[str, int] = {}

    async def aclose(self) -> None:
        self._closed = True
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- state, for health and metrics ---------------------------------------------------------------------------
    def breaker(self, name: str) -> CircuitBreaker:
        b = self._breakers.get(name)
        if b is None:
            cb = self._config.circuit_breaker
            b = self._breakers[name] = CircuitBreaker(cb.failures, cb.cooldown_s)
        return b

    def circuit_state(self, name: str) -> Literal["closed", "open", "half_open"]:
        return self.breaker(name).state

    def in_flight(self, name: str) -> int:
        """Calls to ``name`` holding a concurrency slot now (open streams included)."""
        return self._in_flight.get(name, 0)

    # --- calls ---------------------------------------------------------------------------------------------------
    async def complete(
        self, upstream: Upstream, body: Mapping[str, Any], *, deadline: float | None = None
    ) -> UpstreamResult:
        """One non-streaming attempt: POST ``{base_url}/chat/completions`` with ``body`` (its ``model`` replaced by
        the upstream's, ``stream`` / ``stream_options`` dropped). Raises an :class:`UpstreamError`."""
        payload = _forward_body(body, upstream.model, stream=False)
        start = time.monotonic()
        trial = self._admit(upstream, start)
        response: aiohttp.ClientResponse | None = None
        try:
            await self._acquire_slot(upstream, deadline)
            try:
                budget, by_deadline = _budget(upstream, deadline)
                try:
                    async with asyncio.timeout(budget):
                        response = await self._send(upstream, payload)
                        status = response.status
                        limit = MAX_RESPONSE_BYTES if 200 <= status < 300 else MAX_ERROR_BODY_BYTES
                        content = await _read_capped(response, limit)
                except TimeoutError as exc:  # the budget, or aiohttp's connect / read timeouts
                    raise _timeout(upstream, exc, by_deadline) from None
                except aiohttp.ClientError as exc:
                    raise _transport_error(upstream, exc) from None
                finally:
                    if response is not None:
                        response.release()  # back to the pool when read to its end, else the connection is closed
            finally:
                self._release_slot(upstream)
            if content is None and 200 <= status < 300:
                raise _bad(upstream, f"answered a body larger than {MAX_RESPONSE_BYTES} bytes")
            data = _completion(upstream, status, content or b"")
        except UpstreamError as exc:
            exc.attempt = self._account(upstream, trial, start, exc.outcome, exc._verdict)
            raise
        except BaseException:
            self._account(upstream, trial, start, "cancelled", None)
            raise
        attempt = self._account(upstream, trial, start, "ok", "alive")
        return UpstreamResult(upstream.name, status, data, time.monotonic() - start, attempt)

    async def stream(
        self, upstream: Upstream, body: Mapping[str, Any], *, deadline: float | None = None
    ) -> UpstreamStream:
        """Open a streaming attempt and wait for its first event: until then every failure raises a classified
        :class:`UpstreamError` (so the caller can still fall back); the returned :class:`UpstreamStream` yields
        that event and the rest. ``stream_options.include_usage`` is forced on (see :class:`UpstreamStream`)."""
        options = body.get("stream_options")
        wants_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        payload = _forward_body(body, upstream.model, stream=True)
        start = time.monotonic()
        trial = self._admit(upstream, start)
        response: aiohttp.ClientResponse | None = None
        events: _SSEEvents | None = None
        try:
            await self._acquire_slot(upstream, deadline)
            try:
                budget, by_deadline = _budget(upstream, deadline)
                try:
                    async with asyncio.timeout(budget):
                        response = await self._send(upstream, payload)
                        if not 200 <= response.status < 300:
                            content = await _read_capped(response, MAX_ERROR_BODY_BYTES)
                            _completion(upstream, response.status, content or b"")  # raises the HTTP error
                        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
                        if media != "text/event-stream":
                            raise _bad(upstream, f"answered a stream request with {media or 'no content type'}")
                        events = _SSEEvents(_text_lines(response))
                        first = await events.next()
                except TimeoutError as exc:  # the budget, or aiohttp's connect / read timeouts
                    raise _timeout(upstream, exc, by_deadline) from None
                except aiohttp.ClientError as exc:
                    raise _transport_error(upstream, exc) from None
                problem = _first_chunk_problem(first)
                if problem:
                    raise _bad(upstream, problem)
            except BaseException:
                try:
                    with contextlib.suppress(aiohttp.ClientError):  # keep the classified error, not the close's
                        if events is not None:
                            await events.aclose()
                finally:
                    if response is not None:
                        response.release()
                    self._release_slot(upstream)
                raise
        except UpstreamError as exc:
            exc.attempt = self._account(upstream, trial, start, exc.outcome, exc._verdict)
            raise
        except BaseException:
            self._account(upstream, trial, start, "cancelled", None)
            raise
        assert first is not None and events is not None and response is not None  # _first_chunk_problem checked
        # the upstream answers: settle the breaker now, a long stream must not hold the half-open trial
        self.breaker(upstream.name).success()
        return UpstreamStream(
            self,
            upstream,
            response,
            events,
            first,
            start=start,
            deadline=deadline,
            client_wants_usage=wants_usage,
        )

    # --- internals -----------------------------------------------------------------------------------------------
    def _admit(self, upstream: Upstream, start: float) -> bool:
        """Ask the breaker; True when this call is the half-open trial. Raises UpstreamUnavailable when open."""
        breaker = self.breaker(upstream.name)
        permit = breaker.admit()
        if permit is None:
            exc = UpstreamUnavailable(
                f"upstream {upstream.name!r} is skipped for another {breaker.retry_in_s():.1f} s after "
                f"{breaker.threshold} consecutive failures (circuit open)",
                upstream=upstream.name,
                retryable=True,
            )
            exc.attempt = self._account(upstream, False, start, exc.outcome, None)
            raise exc
        if permit == "trial":
            log.info("upstream %s: cooldown over, sending one trial call (circuit half-open)", upstream.name)
        return permit == "trial"

    async def _acquire_slot(self, upstream: Upstream, deadline: float | None) -> None:
        sem = self._semaphores.get(upstream.name)
        if sem is None:
            sem = self._semaphores[upstream.name] = asyncio.Semaphore(upstream.max_concurrency)
        remaining = _remaining(deadline)
        try:
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                await sem.acquire()
        except TimeoutError:
            exc = UpstreamTimeout(
                f"upstream {upstream.name!r}: the deadline passed before a concurrency slot was free "
                f"(max_concurrency {upstream.max_concurrency})",
                upstream=upstream.name,
                retryable=True,
            )
            exc._verdict = None  # never called: says nothing about the upstream
            raise exc from None
        self._in_flight[upstream.name] = self._in_flight.get(upstream.name, 0) + 1

    def _release_slot(self, upstream: Upstream) -> None:
        self._in_flight[upstream.name] -= 1
        self._semaphores[upstream.name].release()

    async def _send(self, upstream: Upstream, payload: dict[str, Any]) -> aiohttp.ClientResponse:
        """POST the body; returns once the status and headers are in (the body is read by the caller)."""
        target = self._targets.get(upstream)
        if target is None:
            target = self._targets[upstream] = self._target(upstream)
        # as httpx's json=: compact UTF-8, NaN / Infinity refused (ValueError) rather than sent as invalid JSON
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        return await self._session().post(
            target.url,
            data=data,
            headers=target.headers,
            proxy=target.proxy,
            ssl=target.ssl,
            timeout=target.timeout,
            allow_redirects=False,
        )

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            if self._closed:
                raise RuntimeError("the upstream client is closed (aclose() was called)")
            # created here, inside the running loop: aiohttp binds its session and connector to it
            connector = aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=0, keepalive_timeout=KEEPALIVE_S)
            self._http = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.CookieJar(unsafe=True),  # as httpx: cookies kept for IP-address hosts too
                trust_env=False,  # proxies are resolved once per upstream (_target); never .netrc credentials
            )
        return self._http

    def _target(self, upstream: Upstream) -> _Target:
        """What every request to ``upstream`` shares, worked out once: URL with query, headers, proxy, TLS, timeouts."""
        url = URL(upstream.url)
        if upstream.params:
            url = url.update_query(dict(upstream.params))
        headers = dict(upstream.headers)
        if not any(k.lower() == "content-type" for k in headers):  # as httpx: the configured headers win
            headers["Content-Type"] = "application/json"
        if url.scheme == "https":
            if self._ssl is None:
                self._ssl = _ssl_context()
            tls: ssl.SSLContext | bool = self._ssl
        else:
            tls = True  # aiohttp's default; unused without TLS
        timeout = aiohttp.ClientTimeout(
            total=None,  # bounded by asyncio.timeout (complete, a stream's first event) and the deadline
            connect=None,  # the wait for a pooled connection: the same bounds (httpx's pool timeout was timeout_s)
            sock_connect=upstream.connect_timeout_s,
            sock_read=upstream.timeout_s,  # the longest wait for the next bytes (httpx's read timeout)
            ceil_threshold=math.inf,  # exact timeouts: aiohttp rounds longer ones up to whole seconds otherwise
        )
        return _Target(url, headers, _env_proxy(url), tls, timeout)

    def _account(
        self,
        upstream: Upstream,
        trial: bool,
        start: float,
        outcome: Outcome,
        verdict: Literal["failure", "alive"] | None,
    ) -> Attempt:
        """Settle the breaker, log and report the attempt."""
        breaker = self.breaker(upstream.name)
        if verdict == "alive":
            breaker.success()
        elif verdict == "failure":
            if breaker.failure(trial):
                log.warning(
                    "upstream %s: circuit open for %g s after %d consecutive failures (last: %s)",
                    upstream.name,
                    breaker.cooldown_s,
                    breaker.threshold,
                    outcome,
                )
        else:
            breaker.abandon(trial)
        attempt = Attempt(upstream.name, outcome, round((time.monotonic() - start) * 1000.0, 3))
        log.debug("upstream %s: %s in %.0f ms", upstream.name, outcome, attempt.elapsed_ms)
        if self._on_attempt is not None:
            try:
                self._on_attempt(attempt)
            except Exception:  # a metrics hook must not fail the call
                log.exception("on_attempt callback failed")
        return attempt


# --- helpers -----------------------------------------------------------------------------------------------------
def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _budget(upstream: Upstream, deadline: float | None) -> tuple[float, bool]:
    """Time this attempt may take, and whether the caller's deadline (not the upstream's timeout) sets it."""
    remaining = _remaining(deadline)
    if remaining is not None and remaining < upstream.timeout_s:
        return max(remaining, 0.0), True
    return upstream.timeout_s, False


def _forward_body(body: Mapping[str, Any], model: str, *, stream: bool) -> dict[str, Any]:
    out = dict(body)
    out["model"] = model
    if stream:
        options = body.get("stream_options")
        out["stream"] = True
        out["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
    else:
        out.pop("stream", None)
        out.pop("stream_options", None)  # only allowed with stream: true
    return out


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The (decoded) body, or None when it is longer than ``limit`` bytes (reading stops there)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _timeout(upstream: Upstream, exc: BaseException, by_deadline: bool) -> UpstreamError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # connect_timeout_s ran out (TCP connect + TLS handshake)
        return UpstreamConnectError(
            f"upstream {upstream.name!r}: connect timed out after {upstream.connect_timeout_s:g} s",
            upstream=upstream.name,
            retryable=True,
        )
    limit = "the deadline" if by_deadline else f"timeout_s ({upstream.timeout_s:g} s)"
    error = UpstreamTimeout(
        f"upstream {upstream.name!r}: no complete answer within {limit}", upstream=upstream.name, retryable=True
    )
    if by_deadline:
        error._verdict = None  # the caller's budget ran out, not necessarily the upstream's fault
    return error


def _transport_error(upstream: Upstream, exc: aiohttp.ClientError) -> UpstreamError:
    """An aiohttp failure before the answer is in: an undecodable body is the upstream's bad answer; anything else
    (refused, DNS, TLS, reset, disconnected, a cut or malformed response) is a failed connection."""
    if isinstance(exc, aiohttp.ClientPayloadError) and isinstance(exc.__cause__, ContentEncodingError):
        return _bad(upstream, "the body could not be decoded")
    return UpstreamConnectError(
        f"upstream {upstream.name!r}: connection failed ({type(exc).__name__})", upstream=upstream.name, retryable=True
    )


def _bad(upstream: Upstream, problem: str) -> UpstreamBadResponse:
    return UpstreamBadResponse(f"upstream {upstream.name!r}: {problem}", upstream=upstream.name, retryable=True)


def _completion(upstream: Upstream, status: int, content: bytes) -> dict[str, Any]:
    """The chat.completion of a 2xx answer; raises the classified error otherwise."""
    if not 200 <= status < 300:
        # 408 and 429 are the upstream's condition, not the request's; 1xx/3xx: a misconfigured upstream
        retryable = status in (408, 429) or status >= 500 or status < 400
        raise UpstreamHTTPError(
            f"upstream {upstream.name!r} answered HTTP {status}",
            upstream=upstream.name,
            retryable=retryable,
            status=status,
            body=_error_body(content),
            outcome=f"http_{status}",
        )
    try:
        data = json.loads(content)
    except ValueError:
        raise _bad(upstream, f"answered HTTP {status} with a body that is not JSON") from None
    problem = _completion_problem(data)
    if problem:
        raise _bad(upstream, f"answered HTTP {status} with no chat completion: {problem}")
    assert isinstance(data, dict)
    return data


def _completion_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "the body is not a JSON object"
    choices = data.get("choices")
    if "error" in data and choices is None:
        return "the body is an error object"
    if not isinstance(choices, list) or not choices:
        return "no choices"
    if not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices):
        return "a choice has no message"
    if data.get("usage") is not None and not isinstance(data["usage"], dict):
        return "usage is not an object"
    return None


def _first_chunk_problem(payload: str | None) -> str | None:
    if payload is None:
        return "the stream ended before its first event"
    if payload == "[DONE]":
        return "the stream ended ([DONE]) without a chunk"
    try:
        chunk = json.loads(payload)
    except ValueError:
        return "the first event is not JSON"
    if not isinstance(chunk, dict):
        return "the first event is not a JSON object"
    if "error" in chunk and "choices" not in chunk:
        return "the first event is an error object"
    if not isinstance(chunk.get("choices"), list):
        return "the first event has no choices"
    return None


def _error_body(content: bytes) -> dict[str, Any] | None:
    """The upstream's OpenAI error object (``{"error": {...}}``) to answer with as is; a bare ``{"message": ...}``
    (older vLLM) or ``{"error": "text"}`` is put in that shape; None when the body is no error object (HTML...)."""
    try:
        data = json.loads(content)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        return data
    message = error if isinstance(error, str) else data.get("message")
    if not isinstance(message, str):
        return None
    kind = data.get("type")
    return {
        "error": {
            "message": message,
            "type": kind if isinstance(kind, str) else "upstream_error",
            "param": None,
            "code": None,
        }
    }


@dataclass(frozen=True)
class _Target:
    """The per-upstream request settings (:meth:`UpstreamClient._target`)."""

    url: URL
    headers: dict[str, str]
    proxy: str | None
    ssl: ssl.SSLContext | bool
    timeout: aiohttp.ClientTimeout


def _ssl_context() -> ssl.SSLContext:
    """httpx's default: the CA bundle named by ``SSL_CERT_FILE`` or ``SSL_CERT_DIR``, else certifi's."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    try:
        import certifi
    except ImportError:  # the system's store
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _env_proxy(url: URL) -> str | None:
    """The proxy httpx would use for ``url``: ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` (any case) unless
    ``NO_PROXY`` names the host."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(url.host or ""):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


async def _text_lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The body as text lines without their ends, as httpx's ``aiter_lines`` gave them: the charset from the content
    type (else UTF-8, undecodable bytes replaced), split where :meth:`str.splitlines` splits."""
    charset = response.charset or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    decoder = codecs.getincrementaldecoder(charset)(errors="replace")
    lines = _LineSplitter()
    async for chunk in response.content.iter_any():
        for line in lines.feed(decoder.decode(chunk)):
            yield line
    for line in lines.feed(decoder.decode(b"", final=True)) + lines.flush():
        yield line


class _LineSplitter:
    """:meth:`str.splitlines` over text that arrives in pieces (a line, or a CR LF pair, may span two)."""

    BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines splits

    def __init__(self) -> None:
        self._buffer = ""  # the unfinished last line
        self._trailing_cr = False  # the last piece ended in "\r": the next may start with its "\n"

    def feed(self, text: str) -> list[str]:
        if self._trailing_cr:
            text, self._trailing_cr = "\r" + text, False
        if text.endswith("\r"):
            text, self._trailing_cr = text[:-1], True
        if not text:
            return []
        lines = text.splitlines()
        lines[0] = self._buffer + lines[0]
        self._buffer = "" if text[-1] in self.BREAKS else lines.pop()
        return lines

    def flush(self) -> list[str]:
        """The last line, when the text does not end with a line break."""
        if not self._buffer and not self._trailing_cr:
            return []
        line, self._buffer, self._trailing_cr = self._buffer, "", False
        return [line]


class _SSEEvents:
    """Server-sent events: ``next()`` gives the next event's data (its ``data:`` lines joined by newlines), or
    None at the end of the stream. Comments, ``event:``, ``id:`` and ``retry:`` lines are skipped."""

    def __init__(self, lines: AsyncIterator[str]) -> None:
        self._lines = lines

    async def next(self) -> str | None:
        data: list[str] = []
        while True:
            try:
                line = await anext(self._lines)
            except StopAsyncIteration:
                return "\n".join(data) if data else None
            if not line:
                if data:
                    return "\n".join(data)
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)

    async def aclose(self) -> None:
        close = getattr(self._lines, "aclose", None)
        if close is not None:
            await close()
