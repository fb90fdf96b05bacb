"""``tierwise batch``: route an OpenAI Batch file and run it on the upstreams' batch APIs (their batch discount).

The input is OpenAI's Batch format, one request per line::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "tierwise", "messages": [{"role": "user", "content": "..."}]}}

``body.model`` takes the gateway's names (:mod:`router.gateway.model_names`): ``tierwise``, ``tierwise:q0.95``,
``tierwise:t0.8`` or a catalog model / tier (no routing); ``body.tierwise`` carries the gateway's routing options
(``role``, ``min_tier``, ``max_tier``, ``task``) and is never sent upstream.

Steps, all in a work directory (:class:`WorkDir`):

1. :func:`read_input` validates every line (errors name the file, the line and the field);
2. :func:`route_lines` routes them in one vectorised pass and prices each at the tier's batch price;
3. :func:`write_upstream_files` writes one Batch file per upstream (``upstreams/<name>.jsonl``) with the upstream's
   model name, holding the lines not submitted yet;
4. :func:`submit` uploads each file (``POST /files``) and creates a batch (``POST /batches``);
5. :func:`collect` reads finished batches (``GET /batches/{id}``, ``GET /files/{id}/content``) and merges the answers
   into one JSONL in input order, priced with the catalog's ``batch_discount``; lines to try again go to
   ``retry.jsonl`` in the input format.

Idempotent by ``custom_id``: ``state.json`` (written atomically after every change) records which custom_id went in
which upstream batch; a line is submitted again only once its batch has finished without an answer for it. A batch
whose creation cannot be confirmed (the connection dropped after the request was sent) keeps its lines out of later
submissions until a listing of the upstream's batches (``GET /batches``) finds it or shows it was never created.

Nothing here logs prompt or answer text; the answers go to the output file only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from router import pricing
from router.atomic_io import write_json_atomic, write_text_atomic
from router.catalog import Catalog
from router.gateway.model_names import ModelNameError, parse_model
from router.gateway.schemas import ChatCompletionRequest, GatewayOptions
from router.gateway.upstreams import Upstream, UpstreamsConfig, UpstreamsError
from router.progress import progress_bar
from router.service.schemas import ChatMessage, RouteRequest

if TYPE_CHECKING:  # pragma: no cover
    from router.core import Router

ENDPOINT = "/v1/chat/completions"
MAX_LINES = 50_000
"""Requests per input file (OpenAI's limit per batch)."""
MAX_LINE_BYTES = 4 * 1024 * 1024
"""Bytes of one input line: above any model's context window as JSON text."""
MAX_INPUT_BYTES = 200 * 1024 * 1024
"""Bytes of the input file (OpenAI's limit per batch input file)."""
MAX_CUSTOM_ID_CHARS = 512
MAX_REPORTED_PROBLEMS = 20
COMPLETION_WINDOW = "24h"
STATE_FORMAT = 1
SUBMISSION_KEY = "tierwise_submission"  # the batch metadata key that lets an unconfirmed creation be found again

RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
FINISHED = frozenset({"completed", "failed", "expired", "cancelled"})
RETRY_STATUSES = frozenset({"failed", "expired", "cancelled", "not_returned"})
"""Line statuses of a finished batch that did not answer: written to ``retry.jsonl`` and submitted again."""
_LINE_KEYS = ("custom_id", "method", "url", "body")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_ERROR_TEXT_CHARS = 300


class BatchError(ValueError):
    """Bad input, state or upstream answer; ``problems`` lists every problem found (the message gives the first)."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        first = self.problems[0] if self.problems else "batch failed"
        more = len(self.problems) - 1
        super().__init__(first + (f" (and {more} more problem{'s' * (more > 1)})" if more > 0 else ""))


# --------------------------------------------------------------------------------------------------------------
# reading the input
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputLine:
    """One validated request of the input file."""

    source: str  # the file name, for messages
    line: int  # 1-based line number in the file
    custom_id: str
    body: dict[str, Any]  # as given
    request: ChatCompletionRequest  # the body as the gateway reads it
    raw: str  # the line's text (for retry.jsonl)

    def where(self, fld: str) -> str:
        return f"{self.source}:{self.line}: {fld}"


class _Problems:
    """Problems found so far; reading stops after :data:`MAX_REPORTED_PROBLEMS`."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_REPORTED_PROBLEMS

    def raise_if_any(self) -> None:
        if self.items:
            raise BatchError(self.items)


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a finite number")


def _finite_float(token: str) -> float:
    value = float(token)
    return value if math.isfinite(value) else _refuse_constant(token)


def _loads(text: str) -> Any:
    """JSON with NaN, Infinity and overflowing numbers refused (no provider accepts them)."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def read_input(
    path: str | Path, *, max_lines: int = MAX_LINES, max_line_bytes: int = MAX_LINE_BYTES
) -> list[InputLine]:
    """Read and validate an OpenAI Batch input file (blank lines skipped).

    Every line must be a JSON object with exactly ``custom_id`` (unique, non-empty), ``method`` ``POST``, ``url``
    ``/v1/chat/completions`` and ``body`` (a chat completion body with ``model`` and ``messages``, not streamed).
    Raises :class:`BatchError` listing the problems (``FILE:LINE: FIELD: why``, at most
    :data:`MAX_REPORTED_PROBLEMS`).
    """
    p = Path(path)
    source = str(path)
    if not p.is_file():
        raise BatchError(f"{source}: no such file")
    size = p.stat().st_size
    if size > MAX_INPUT_BYTES:
        raise BatchError(
            f"{source}: {size:,} bytes is more than the {MAX_INPUT_BYTES:,} a batch input file may have; split it"
        )
    with p.open("rb") as fh:  # counted first: a file that is too long is refused before any line is parsed
        count = sum(1 for data in _raw_lines(fh, max_line_bytes) if data is None or data.strip())
    if count > max_lines:
        raise BatchError(
            f"{source}: {count:,} requests is more than {max_lines:,} (the limit per batch); split the file"
        )
    problems = _Problems()
    lines: list[InputLine] = []
    seen: dict[str, int] = {}
    with p.open("rb") as fh:
        for n, data in enumerate(_raw_lines(fh, max_line_bytes), start=1):
            if data is None:
                problems.add(f"{source}:{n}: the line is longer than {max_line_bytes:,} bytes")
            elif data.strip():
                parsed = _parse_line(source, n, data, seen, problems)
                if parsed is not None:
                    lines.append(parsed)
            if problems.full:
                break
    problems.raise_if_any()
    if not lines:
        raise BatchError(f"{source}: no requests in the file")
    return lines


def _raw_lines(fh: Any, max_line_bytes: int) -> Iterator[bytes | None]:
    """Each line's bytes without the line end; None for a line longer than ``max_line_bytes`` (never read whole)."""
    while True:
        data = fh.readline(max_line_bytes + 2)  # + "\r\n"
        if not data:
            return
        body = data.rstrip(b"\r\n")
        if len(body) > max_line_bytes or (not data.endswith(b"\n") and len(data) == max_line_bytes + 2):
            while data and not data.endswith(b"\n"):  # skip the rest of the long line
                data = fh.readline(1 << 20)
            yield None
            continue
        yield body


def _parse_line(source: str, n: int, data: bytes, seen: dict[str, int], problems: _Problems) -> InputLine | None:
    at = f"{source}:{n}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.add(f"{at}: not UTF-8 text (byte {exc.start + 1})")
        return None
    try:
        obj = _loads(text)
    except json.JSONDecodeError as exc:
        problems.add(f"{at}: not valid JSON: {exc.msg} (column {exc.colno})")
        return None
    except (ValueError, RecursionError) as exc:
        problems.add(f"{at}: not valid JSON: {exc}")
        return None
    if not isinstance(obj, dict):
        problems.add(f"{at}: a line must be a JSON object with custom_id, method, url and body")
        return None
    unknown = [k for k in obj if k not in _LINE_KEYS]
    if unknown:
        problems.add(f"{at}: {unknown[0]}: unknown field; a batch line has only {', '.join(_LINE_KEYS)}")
        return None
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid.strip():
        problems.add(f"{at}: custom_id: {'missing' if cid is None else 'must be a non-empty string'}")
        return None
    if len(cid) > MAX_CUSTOM_ID_CHARS:
        problems.add(f"{at}: custom_id: longer than {MAX_CUSTOM_ID_CHARS} characters")
        return None
    if cid in seen:
        problems.add(f"{at}: custom_id: {cid!r} repeats line {seen[cid]}; custom_ids must be unique")
        return None
    seen[cid] = n
    if obj.get("method") != "POST":
        problems.add(f"{at}: method: must be \"POST\", got {json.dumps(obj.get('method'))}")
        return None
    if obj.get("url") != ENDPOINT:
        problems.add(f"{at}: url: must be {ENDPOINT!r} (only chat completions are routed), got {obj.get('url')!r}")
        return None
    body = obj.get("body")
    if not isinstance(body, dict):
        problems.add(f"{at}: body: {'missing' if body is None else 'must be a JSON object'}")
        return None
    for key in ("model", "messages"):
        if key not in body:
            problems.add(f"{at}: body.{key}: missing")
            return None
    if body.get("stream"):
        problems.add(f"{at}: body.stream: a batch request cannot be streamed")
        return None
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValueError as exc:
        problems.add(f"{at}: {_validation_message(exc, 'body')}")
        return None
    return InputLine(source, n, cid, body, request, text)


def _error_text(exc: ValueError) -> str:
    """The first problem of a (pydantic) validation error, without its location."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and errors():
        return str(errors()[0].get("msg", exc)).removeprefix("Value error, ")
    return str(exc)


def _validation_message(exc: ValueError, prefix: str) -> str:
    """``prefix.field: why`` of a pydantic error's first problem."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and errors():
        e = errors()[0]
        loc = ".".join(str(x) for x in (prefix, *e.get("loc", ())))
        return f"{loc}: {str(e.get('msg', exc)).removeprefix('Value error, ')}"
    return f"{prefix}: {exc}"


# --------------------------------------------------------------------------------------------------------------
# routing
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoutedLine:
    """Where one request goes and what it is expected to cost."""

    line: int
    custom_id: str
    tier: str
    tier_index: int
    model: str  # the catalog model
    upstream: str  # the upstreams entry (named after the catalog model)
    upstream_model: str  # the model name sent upstream
    routed: bool  # False: the body named a catalog model
    reason: str  # the decision's reason, "pass_through" when not routed
    body: dict[str, Any]  # the body to send (upstream model filled in, no ``tierwise`` options)
    estimate: pricing.CallCost

    def batch_line(self) -> dict[str, Any]:
        return {"custom_id": self.custom_id, "method": "POST", "url": ENDPOINT, "body": self.body}


@dataclass
class _Plan:
    line: InputLine
    tier: int | None = None  # set: pass-through
    threshold: float | None = None
    opts: GatewayOptions = field(default_factory=GatewayOptions)
    lo: int | None = None
    hi: int | None = None
    text: str = ""
    chars: int = 0


def upstream_model(config: UpstreamsConfig, name: str) -> str:
    """The model name entry ``name`` sends upstream (no key needed, unlike :meth:`UpstreamsConfig.upstream`)."""
    entry = config.upstreams[name]
    return entry.model or name


def route_lines(
    router: Router,
    lines: Sequence[InputLine],
    config: UpstreamsConfig,
    *,
    progress: bool = False,
    chunk_size: int = 256,
) -> list[RoutedLine]:
    """Route every line (one encoder and classifier pass per ``chunk_size`` lines, with the gateway's rules) and
    price it at its tier's batch price; raises :class:`BatchError` naming each line with an unknown model, a knob
    the model cannot use, an unknown tier bound, no user turn to route on, or a model without an upstream entry."""
    cat = router.catalog
    tier_names, models = cat.tier_names, cat.models
    problems = _Problems()
    plans: list[_Plan] = []
    for ln in lines:
        plan = _plan(router, ln, tier_names, models, problems)
        if plan is not None:
            plans.append(plan)
        if problems.full:
            break
    problems.raise_if_any()

    routed_idx = [i for i, p in enumerate(plans) if p.tier is None]
    proba: dict[int, Any] = {}
    bar = progress_bar(progress, len(routed_idx), "routing", "request")
    try:
        for start in range(0, len(routed_idx), chunk_size):
            part = routed_idx[start : start + chunk_size]
            rows = router.predict_proba_array(
                [plans[i].text for i in part], [plans[i].opts.role for i in part], [plans[i].opts.task for i in part]
            )
            for i, row in zip(part, rows, strict=True):
                proba[i] = row
            bar.update(len(part))
    finally:
        bar.close()

    out: list[RoutedLine] = []
    unserved: dict[str, list[InputLine]] = {}  # catalog model without an upstream entry -> its lines
    for i, plan in enumerate(plans):
        ln = plan.line
        if plan.tier is None:
            d = router.decide(
                proba[i], threshold=plan.threshold, role=plan.opts.role,
                min_tier=None if plan.lo is None else tier_names[plan.lo],
                max_tier=None if plan.hi is None else tier_names[plan.hi], prompt_chars=plan.chars,
            )
            t, reason, estimate = d.tier_index, d.reason, d.estimated_cost_usd
        else:
            t, reason = plan.tier, "pass_through"
            estimate = pricing.call_cost(
                cat.tiers, t, plan.chars, chars_per_token=router.chars_per_token, cost_model=router.cost_model
            )
        assert estimate is not None  # decided with the prompt's length
        model = models[t]
        if model not in config.upstreams:
            unserved.setdefault(model, []).append(ln)
            continue
        body = {k: v for k, v in ln.body.items() if k != "tierwise"}
        body["model"] = upstream_model(config, model)
        out.append(
            RoutedLine(
                line=ln.line, custom_id=ln.custom_id, tier=tier_names[t], tier_index=t, model=model, upstream=model,
                upstream_model=body["model"], routed=plan.tier is None, reason=reason, body=body, estimate=estimate,
            )
        )
    for model, missed in unserved.items():
        shown = ", ".join(str(x.line) for x in missed[:10]) + (", ..." if len(missed) > 10 else "")
        problems.add(
            f"{missed[0].where('body.model')}: {len(missed)} request(s) (lines {shown}) go to tier "
            f"{cat.tier(model).name} (model {model}), which has no entry in {config.source}; add one named {model} "
            "under upstreams:"
        )
    problems.raise_if_any()
    return out


def _plan(router: Router, ln: InputLine, tiers: list[str], models: list[str], problems: _Problems) -> _Plan | None:
    req = ln.request
    try:
        choice = parse_model(req.model, tiers, models)
    except ModelNameError as exc:
        problems.add(f"{ln.where('body.model')}: {exc}")
        return None
    opts = req.tierwise or GatewayOptions()
    chars = sum(len(m.text()) for m in req.messages)
    if not choice.routed:
        assert choice.tier is not None
        return _Plan(ln, tier=tiers.index(choice.tier), opts=opts, chars=chars)
    plan = _Plan(ln, opts=opts, chars=chars)
    try:
        if choice.quality_target is not None:
            plan.threshold = router.threshold_for(choice.quality_target)
        else:
            plan.threshold = choice.threshold
    except ValueError as exc:
        problems.add(f"{ln.where('body.model')}: {exc}")
        return None
    bounds: list[int | None] = []
    for name in ("min_tier", "max_tier"):
        value = getattr(opts, name)
        try:
            bounds.append(None if value is None else router.catalog.index(value))
        except KeyError:
            problems.add(f"{ln.where('body.tierwise.' + name)}: unknown tier {value!r}; tiers are {', '.join(tiers)}")
            return None
    plan.lo, plan.hi = bounds
    if plan.lo is not None and plan.hi is not None and plan.lo > plan.hi:
        problems.add(f"{ln.where('body.tierwise.min_tier')}: {opts.min_tier!r} is above max_tier {opts.max_tier!r}")
        return None
    try:
        route_req = RouteRequest(
            messages=[ChatMessage(role=m.role, content=m.content) for m in req.messages], role=opts.role
        )
    except ValueError as exc:
        problems.add(f"{ln.where('body.messages')}: {_error_text(exc)}")
        return None
    plan.text = route_req.routing_text()
    return plan


# --------------------------------------------------------------------------------------------------------------
# summary of a routing
# --------------------------------------------------------------------------------------------------------------
@dataclass
class TierCount:
    tier: str
    requests: int = 0
    batch_usd: float = 0.0  # estimated, at batch prices (priced lines only)
    unpriced: int = 0


@dataclass
class RoutingSummary:
    """What :func:`route_lines` decided for the lines to submit, estimated at batch prices."""

    tiers: list[TierCount]
    total: int
    routed: int  # decided by the model (the rest named a catalog model)
    skipped: int  # already submitted
    batch_usd: float | None  # None: some line could not be priced
    top_tier_batch_usd: float | None
    top_tier: str
    notes: list[str]

    def lines(self) -> list[str]:
        out = [
            f"{self.total} request(s) to submit ({self.routed} routed by the model, {self.total - self.routed} named "
            f"a catalog model); {self.skipped} already submitted, skipped"
        ]
        if self.total:
            out.append(f"{'tier':<12} {'requests':>8} {'share':>7} {'est. batch USD':>15}")
            for t in self.tiers:
                if t.requests:
                    usd = "unpriced" if t.unpriced == t.requests else f"{t.batch_usd:.6f}"
                    out.append(f"{t.tier:<12} {t.requests:>8} {t.requests / self.total:>7.1%} {usd:>15}")
            if self.batch_usd is not None and self.top_tier_batch_usd is not None:
                saved = 1 - self.batch_usd / self.top_tier_batch_usd if self.top_tier_batch_usd > 0 else 0.0
                out.append(
                    f"estimated batch cost: ${self.batch_usd:.6f} vs ${self.top_tier_batch_usd:.6f} with every request "
                    f"on the top tier ({self.top_tier}) at batch prices ({saved:.1%} less)"
                )
            else:
                out.append("estimated batch cost: not known (see the notes)")
        out += [f"note: {n}" for n in self.notes]
        return out


def summarize(routed: Sequence[RoutedLine], catalog: Catalog, skipped: int = 0) -> RoutingSummary:
    """Per tier counts and estimated batch cost of ``routed``, against every line on the top tier."""
    counts = {t.name: TierCount(t.name) for t in catalog.tiers}
    total_usd: float | None = 0.0
    top_usd: float | None = 0.0
    for r in routed:
        c = counts[r.tier]
        c.requests += 1
        e = r.estimate
        if e.batch_tier is None:
            c.unpriced += 1
            total_usd = None
        else:
            c.batch_usd += e.batch_tier
            total_usd = None if total_usd is None else total_usd + e.batch_tier
        top_usd = None if top_usd is None or e.batch_top_tier is None else top_usd + e.batch_top_tier
    notes = [
        f"tier {c.tier}: {c.unpriced} request(s) without a price (no list prices, no fitted cost): not in the estimate"
        for c in counts.values()
        if c.unpriced
    ]
    no_discount = [c.tier for c in counts.values() if c.requests and catalog.tier(c.tier).batch_discount == 0]
    if no_discount:
        notes.append(f"the catalog gives no batch discount for {', '.join(no_discount)}: priced at list prices")
    return RoutingSummary(
        tiers=list(counts.values()), total=len(routed), routed=sum(r.routed for r in routed), skipped=skipped,
        batch_usd=total_usd, top_tier_batch_usd=top_usd, top_tier=catalog.tiers[-1].name, notes=notes,
    )


# --------------------------------------------------------------------------------------------------------------
# the work directory and its state
# --------------------------------------------------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def safe_name(name: str) -> str:
    """``name`` as a file name: other characters than letters, digits, ``.``, ``_`` and ``-`` replaced, with a hash
    of the original when anything was replaced (two names never share a file)."""
    cleaned = _SAFE_NAME.sub("_", name).strip(".") or "_"
    if cleaned != name:
        cleaned += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return cleaned


class WorkDir:
    """A batch job's folder: ``state.json``, ``upstreams/`` (the files to submit), ``results/`` (the downloaded
    output and error files), ``retry.jsonl`` and (by default) ``results.jsonl``.

    The state (JSON, rewritten atomically after every change)::

        {"format": 1,
         "catalogs": {"<sha>": {catalog}},                       # the catalogs lines were priced with
         "submissions": {"s0001": {"upstream", "base_url", "batch_id" (None: unconfirmed), "token",
                                   "input_file_id", "custom_ids", "catalog", "router_version", "submitted_at",
                                   "status", "request_counts", "output_file_id", "error_file_id", "collected"}},
         "requests": {"<custom_id>": {"submission", "tier", "model", "upstream", "status"}}}

    A request's ``status`` is ``submitted`` until its batch is collected, then ``ok`` or one of
    :data:`RETRY_STATUSES`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.state_path = self.path / "state.json"
        self.state = self._load()

    @property
    def upstreams_dir(self) -> Path:
        return self.path / "upstreams"

    @property
    def results_dir(self) -> Path:
        return self.path / "results"

    @property
    def retry_path(self) -> Path:
        return self.path / "retry.jsonl"

    @property
    def default_output(self) -> Path:
        return self.path / "results.jsonl"

    def _load(self) -> dict[str, Any]:
        empty: dict[str, Any] = {"format": STATE_FORMAT, "catalogs": {}, "submissions": {}, "requests": {}}
        if self.path.exists() and not self.path.is_dir():
            raise BatchError(f"--work-dir {self.path}: not a directory")
        if not self.state_path.is_file():
            return empty
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BatchError(f"{self.state_path}: cannot read the batch state: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise BatchError(f"{self.state_path}: not a tierwise batch state (format {STATE_FORMAT})")
        for key in ("catalogs", "submissions", "requests"):
            if not isinstance(state.get(key), dict):
                raise BatchError(f"{self.state_path}: {key}: missing or not an object")
        return state

    def save(self) -> None:
        write_json_atomic(self.state_path, self.state, indent=1)

    @contextlib.contextmanager
    def locked(self) -> Iterator[WorkDir]:
        """Hold the folder's lock (one ``tierwise batch`` per work dir at a time; the state is read again)."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            yield self
            return
        with open(self.path / ".lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise BatchError(f"{self.path}: another tierwise batch is using this work dir") from None
            try:
                self.state = self._load()
                yield self
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @property
    def requests(self) -> dict[str, dict[str, Any]]:
        return self.state["requests"]  # type: ignore[no-any-return]

    @property
    def submissions(self) -> dict[str, dict[str, Any]]:
        return self.state["submissions"]  # type: ignore[no-any-return]

    def pending(self, custom_id: str) -> bool:
        """Whether the line still needs submitting: never submitted, or its batch finished without its answer."""
        r = self.requests.get(custom_id)
        return r is None or r["status"] in RETRY_STATUSES

    def add_catalog(self, catalog: Catalog) -> str:
        data = catalog.model_dump(mode="json")
        key = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
        self.state["catalogs"].setdefault(key, data)
        return key

    def catalog(self, key: str) -> Catalog:
        return Catalog.model_validate(self.state["catalogs"][key])

    def new_submission_id(self) -> str:
        n = len(self.submissions) + 1
        while f"s{n:04d}" in self.submissions:
            n += 1
        return f"s{n:04d}"


def write_upstream_files(work: WorkDir, routed: Sequence[RoutedLine]) -> dict[str, tuple[Path, list[str]]]:
    """Write ``upstreams/<upstream>.jsonl`` with the lines not submitted yet (input order); upstream -> (file,
    custom_ids). Files of upstreams with nothing left to submit are removed."""
    groups: dict[str, list[RoutedLine]] = {}
    for r in routed:
        if work.pending(r.custom_id):
            groups.setdefault(r.upstream, []).append(r)
    out: dict[str, tuple[Path, list[str]]] = {}
    wanted = set()
    for upstream, rows in groups.items():
        path = work.upstreams_dir / f"{safe_name(upstream)}.jsonl"
        text = "".join(json.dumps(r.batch_line(), ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows)
        size = len(text.encode())
        if size > MAX_INPUT_BYTES:
            raise BatchError(
                f"the batch file for upstream {upstream} would have {size:,} bytes, more than the {MAX_INPUT_BYTES:,} "
                "a batch input file may have; split the input"
            )
        write_text_atomic(path, text)
        wanted.add(path.name)
        out[upstream] = (path, [r.custom_id for r in rows])
    if work.upstreams_dir.is_dir():
        for old in work.upstreams_dir.glob("*.jsonl"):
            if old.name not in wanted:
                old.unlink()
    return out


# --------------------------------------------------------------------------------------------------------------
# the upstreams' batch API
# --------------------------------------------------------------------------------------------------------------
class _Ambiguous(Exception):
    """The request was sent but no answer came: it may have taken effect."""


class UpstreamHttpError(BatchError):
    """An upstream answered a batch API call with an error status (``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class BatchApi:
    """The OpenAI Files and Batches endpoints of the upstreams (sync httpx; the key from the upstream's
    ``api_key_env``, as :class:`~router.gateway.upstreams.Upstream` carries it). ``client``: for tests."""

    RETRIES = 3

    def __init__(self, client: httpx.Client | None = None, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._own = client is None
        self.client = client or httpx.Client(follow_redirects=False)
        self.sleep = sleep

    def close(self) -> None:
        if self._own:
            self.client.close()

    def __enter__(self) -> BatchApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self, up: Upstream, method: str, path: str, *, idempotent: bool, **kwargs: Any
    ) -> httpx.Response:
        """One call with retries on failures that say nothing about the request (429, 5xx, connection errors) for
        ``idempotent`` calls, and on connect errors (nothing sent) for all. Raises BatchError, or _Ambiguous when a
        non-idempotent request was sent without an answer."""
        url = f"{up.base_url}{path}"
        params = {**up.params, **kwargs.pop("params", {})}
        timeout = httpx.Timeout(up.timeout_s, connect=up.connect_timeout_s)
        what = f"upstream {up.name}: {method} {path}"
        for attempt in range(self.RETRIES):
            last = attempt == self.RETRIES - 1
            try:
                r = self.client.request(
                    method, url, headers=dict(up.headers), params=params, timeout=timeout, **kwargs
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                if last:
                    raise BatchError(f"{what}: cannot connect ({type(exc).__name__})") from None
            except httpx.HTTPError as exc:
                if not idempotent:
                    raise _Ambiguous(f"{what}: no answer ({type(exc).__name__})") from None
                if last:
                    raise BatchError(f"{what}: no answer ({type(exc).__name__})") from None
            else:
                if r.status_code < 400:
                    return r
                if last or not idempotent or not (r.status_code == 429 or r.status_code >= 500):
                    raise UpstreamHttpError(f"{what}: {_http_problem(up, r)}", r.status_code)
            self.sleep(2.0**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _json(up: Upstream, r: httpx.Response, what: str) -> dict[str, Any]:
        try:
            data = r.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise BatchError(f"upstream {up.name}: {what}: the answer is not a JSON object")
        return data

    def upload(self, up: Upstream, name: str, data: bytes) -> str:
        """``POST /files`` (purpose batch); the file id. An upstream answering 404 (405, 501) has no batch API."""
        try:
            r = self._request(
                up, "POST", "/files", idempotent=True,  # a repeated upload only leaves an unused file
                files={"file": (name, data, "application/jsonl")}, data={"purpose": "batch"},
            )
        except UpstreamHttpError as exc:
            if exc.status in (404, 405, 501):
                raise BatchError(
                    f"upstream {up.name} ({up.base_url}) has no batch API: POST /files answered HTTP {exc.status}; "
                    "route these requests through the gateway (tierwise serve) instead"
                ) from None
            raise
        file_id = self._json(up, r, "POST /files").get("id")
        if not isinstance(file_id, str) or not file_id:
            raise BatchError(f"upstream {up.name}: POST /files: the answer has no file id")
        return file_id

    def create(self, up: Upstream, input_file_id: str, token: str) -> dict[str, Any]:
        """``POST /batches``; the batch object. Raises _Ambiguous when it may have been created unseen."""
        body = {
            "input_file_id": input_file_id, "endpoint": ENDPOINT, "completion_window": COMPLETION_WINDOW,
            "metadata": {SUBMISSION_KEY: token},
        }
        r = self._request(up, "POST", "/batches", idempotent=False, json=body)
        batch = self._json(up, r, "POST /batches")
        if not isinstance(batch.get("id"), str):
            raise BatchError(f"upstream {up.name}: POST /batches: the answer has no batch id")
        return batch

    def get(self, up: Upstream, batch_id: str) -> dict[str, Any]:
        r = self._request(up, "GET", f"/batches/{batch_id}", idempotent=True)
        return self._json(up, r, f"GET /batches/{batch_id}")

    def content(self, up: Upstream, file_id: str) -> bytes:
        return self._request(up, "GET", f"/files/{file_id}/content", idempotent=True).content

    def find(self, up: Upstream, token: str, max_pages: int = 10) -> tuple[dict[str, Any] | None, bool]:
        """(the batch created with ``token``, whether the whole listing was searched) via ``GET /batches``."""
        after: str | None = None
        for _ in range(max_pages):
            params = {"limit": "100", **({"after": after} if after else {})}
            page = self._json(up, self._request(up, "GET", "/batches", idempotent=True, params=params), "GET /batches")
            raw = page.get("data")
            data = [b for b in raw if isinstance(b, dict)] if isinstance(raw, list) else []
            for b in data:
                meta = b.get("metadata")
                if isinstance(meta, dict) and meta.get(SUBMISSION_KEY) == token:
                    return b, True
            if not page.get("has_more") or not data:
                return None, True
            after = str(page.get("last_id") or data[-1].get("id"))
        return None, False


def _http_problem(up: Upstream, r: httpx.Response) -> str:
    """``HTTP <status>: <the upstream's error message>`` (shortened; a 401/403 names the key variable)."""
    message = ""
    try:
        data = r.json()
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or "")
        elif isinstance(data, dict) and data.get("detail"):
            message = str(data["detail"])
    except ValueError:
        pass
    text = f"HTTP {r.status_code}"
    if message:
        text += f": {message[:_ERROR_TEXT_CHARS]}"
    if r.status_code in (401, 403):
        text += f" (check the key in {up.api_key_env})" if up.api_key_env else " (no api_key_env is set for it)"
    return text


# --------------------------------------------------------------------------------------------------------------
# submitting
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Submitted:
    upstream: str
    batch_id: str | None  # None: creation unconfirmed
    requests: int


@dataclass
class SubmitReport:
    submitted: list[Submitted] = field(default_factory=list)
    skipped: int = 0  # lines already submitted
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def reconcile(work: WorkDir, config: UpstreamsConfig, api: BatchApi) -> list[str]:
    """Settle submissions whose batch creation was not confirmed: found in the upstream's batch listing -> recorded;
    surely absent -> their lines are released for submission. Notes for the ones still unknown."""
    notes: list[str] = []
    for sid, sub in list(work.submissions.items()):
        if sub.get("batch_id") is not None:
            continue
        up = _upstream_for(config, sub)
        try:
            found, complete = api.find(up, sub["token"])
        except BatchError as exc:
            found, complete = None, False
            notes.append(str(exc))
        if found is not None:
            sub.update(batch_id=found["id"], status=found.get("status"))
        elif complete:
            for cid in sub["custom_ids"]:
                if work.requests.get(cid, {}).get("submission") == sid:
                    work.requests[cid]["status"] = "not_returned"
            del work.submissions[sid]
        else:
            notes.append(
                f"the batch of {len(sub['custom_ids'])} request(s) sent to upstream {sub['upstream']} at "
                f"{sub['submitted_at']} may exist: its creation was never confirmed. Look for metadata "
                f"{SUBMISSION_KEY}={sub['token']} among the upstream's batches; these requests are not submitted "
                "again meanwhile"
            )
        work.save()
    return notes


def _upstream_for(config: UpstreamsConfig, sub: Mapping[str, Any]) -> Upstream:
    name = sub["upstream"]
    if name not in config.upstreams:
        raise BatchError(
            f"{config.source}: no upstream {name!r}, which batch {sub.get('batch_id') or sub.get('token')} was "
            "submitted to; put its entry back to collect it"
        )
    up = config.upstream(name)
    if up.base_url != sub["base_url"]:
        raise BatchError(
            f"{config.source}: upstreams.{name}.base_url is not the URL batch {sub.get('batch_id') or sub.get('token')}"
            f" was submitted to ({sub['base_url']}); batch ids belong to one provider"
        )
    return up


def submit(
    work: WorkDir,
    routed: Sequence[RoutedLine],
    config: UpstreamsConfig,
    catalog: Catalog,
    *,
    router_version: str,
    api: BatchApi | None = None,
) -> SubmitReport:
    """Upload the lines not submitted yet, one file and one batch per upstream, recording each in the state before
    the batch is created (so a crash can never submit a line twice). Problems with one upstream (no batch API,
    a refused key) do not stop the others: they are in ``problems``."""
    report = SubmitReport()
    with contextlib.ExitStack() as stack:
        api = api or stack.enter_context(BatchApi())
        report.notes += reconcile(work, config, api)
        report.skipped = sum(not work.pending(r.custom_id) for r in routed)
        files = write_upstream_files(work, routed)
        by_id = {r.custom_id: r for r in routed}
        cat_key = work.add_catalog(catalog)
        for name, (path, cids) in files.items():
            try:
                report.submitted.append(
                    _submit_one(work, config, api, name, path, [by_id[c] for c in cids], cat_key, router_version)
                )
            except (BatchError, UpstreamsError) as exc:
                report.problems.append(str(exc))
    return report


def _submit_one(
    work: WorkDir,
    config: UpstreamsConfig,
    api: BatchApi,
    name: str,
    path: Path,
    rows: list[RoutedLine],
    cat_key: str,
    router_version: str,
) -> Submitted:
    up = config.upstream(name)  # the key is read here: a missing one fails this upstream only
    file_id = api.upload(up, path.name, path.read_bytes())
    sid, token = work.new_submission_id(), uuid.uuid4().hex
    cids = [r.custom_id for r in rows]
    before = {c: work.requests.get(c) for c in cids}
    work.submissions[sid] = {
        "upstream": name, "base_url": up.base_url, "batch_id": None, "token": token, "input_file_id": file_id,
        "custom_ids": cids, "catalog": cat_key, "router_version": router_version, "submitted_at": _now(),
        "status": None, "request_counts": None, "output_file_id": None, "error_file_id": None, "collected": False,
    }
    for r in rows:
        work.requests[r.custom_id] = {
            "submission": sid, "tier": r.tier, "model": r.model, "upstream": name, "status": "submitted",
        }
    work.save()  # recorded before the batch exists: a crash from here on cannot lead to a second submission
    try:
        batch = api.create(up, file_id, token)
    except _Ambiguous as exc:
        raise BatchError(
            f"{exc}: the batch may have been created; the next --submit or --collect looks for it (metadata "
            f"{SUBMISSION_KEY}={token}) and its {len(cids)} request(s) are not submitted again meanwhile"
        ) from None
    except BatchError:
        del work.submissions[sid]  # the upstream answered: no batch was created
        for c, prev in before.items():
            if prev is None:
                work.requests.pop(c, None)
            else:
                work.requests[c] = prev
        work.save()
        raise
    work.submissions[sid].update(batch_id=batch["id"], status=batch.get("status"))
    work.save()
    path.unlink(missing_ok=True)  # submitted: the file now lists nothing left to submit
    return Submitted(name, batch["id"], len(cids))


# --------------------------------------------------------------------------------------------------------------
# collecting
# --------------------------------------------------------------------------------------------------------------
@dataclass
class CollectReport:
    output: Path
    counts: Counter[str]
    cost_usd: float  # of the answered lines that could be priced
    retry: list[str]  # custom_ids to submit again, input order
    retry_path: Path | None
    pending_batches: list[str]
    notes: list[str]

    def lines(self, max_ids: int = 100) -> list[str]:
        order = ["ok", "failed", "expired", "cancelled", "not_returned", "pending", "not_submitted"]
        shown = ", ".join(f"{k} {self.counts[k]}" for k in order if self.counts.get(k))
        out = [f"{sum(self.counts.values())} request(s): {shown} -> {self.output}"]
        out.append(f"cost at batch prices: ${self.cost_usd:.6f}")
        if self.retry:
            ids = ", ".join(self.retry[:max_ids])
            more = f" and {len(self.retry) - max_ids} more" if len(self.retry) > max_ids else ""
            out.append(f"to retry ({len(self.retry)}, written to {self.retry_path}): {ids}{more}")
        if self.pending_batches:
            out.append(f"still running: {', '.join(self.pending_batches)}; collect again later")
        if self.counts.get("not_submitted"):
            out.append(f"{self.counts['not_submitted']} request(s) never submitted: run with --submit")
        out += [f"note: {n}" for n in self.notes]
        return out


def collect(
    work: WorkDir,
    lines: Sequence[InputLine],
    config: UpstreamsConfig,
    output: Path,
    *,
    wait_s: float = 0.0,
    poll_s: float = 10.0,
    api: BatchApi | None = None,
    progress: bool = False,
) -> CollectReport:
    """Read every finished batch not read yet (waiting up to ``wait_s`` for running ones), then write the merged
    results of ``lines`` to ``output`` in input order, and ``retry.jsonl`` with the lines to submit again (removed
    when there are none)."""
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        api = api or stack.enter_context(BatchApi())
        notes += reconcile(work, config, api)
        open_subs = [sid for sid, s in work.submissions.items() if s.get("batch_id") and not s.get("collected")]
        bar = progress_bar(
            progress, sum(len(work.submissions[s]["custom_ids"]) for s in open_subs), "collecting", "request"
        )
        deadline = time.monotonic() + max(0.0, wait_s)
        try:
            while True:
                for sid in list(open_subs):
                    sub = work.submissions[sid]
                    up = _upstream_for(config, sub)
                    batch = api.get(up, sub["batch_id"])
                    sub.update(
                        status=batch.get("status"), request_counts=batch.get("request_counts"),
                        output_file_id=batch.get("output_file_id"), error_file_id=batch.get("error_file_id"),
                    )
                    if batch.get("status") in FINISHED:
                        _download(work, api, up, sid, batch)
                        open_subs.remove(sid)
                        bar.update(len(sub["custom_ids"]))
                    work.save()
                if not open_subs or time.monotonic() >= deadline:
                    break
                time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        finally:
            bar.close()
    pending = [str(work.submissions[s]["batch_id"]) for s in open_subs]
    return _merge(work, lines, output, pending, notes)


def _results_path(work: WorkDir, sid: str, kind: str) -> Path:
    return work.results_dir / f"{sid}.{kind}.jsonl"


def _download(work: WorkDir, api: BatchApi, up: Upstream, sid: str, batch: Mapping[str, Any]) -> None:
    """Save a finished batch's output and error files, and set the status of each of its requests."""
    sub = work.submissions[sid]
    found: dict[str, str] = {}
    for kind in ("output", "error"):
        file_id = batch.get(f"{kind}_file_id")
        path = _results_path(work, sid, kind)
        if isinstance(file_id, str) and file_id:
            data = api.content(up, file_id)
            write_text_atomic(path, data.decode("utf-8", errors="replace"))
            for cid, line in _read_results(path).items():
                found[cid] = _line_status(line)
        else:
            path.unlink(missing_ok=True)
    missing = _missing_status(str(batch.get("status")))
    for cid in sub["custom_ids"]:
        r = work.requests.get(cid)
        if r is not None and r.get("submission") == sid:
            r["status"] = found.get(cid, missing)
    sub["collected"] = True
    sub["collected_at"] = _now()
    if batch.get("status") == "failed":
        sub["errors"] = _batch_errors(batch)


def _read_results(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # a provider's broken line: its request shows as not returned
        if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
            out[line["custom_id"]] = line
    return out


def _line_status(line: Mapping[str, Any]) -> str:
    err = line.get("error")
    if isinstance(err, dict) and err:
        return "expired" if err.get("code") == "batch_expired" else "failed"
    resp = line.get("response")
    code = resp.get("status_code") if isinstance(resp, dict) else None
    return "ok" if isinstance(code, int) and 200 <= code < 300 else "failed"


def _missing_status(batch_status: str) -> str:
    """Status of a request a finished batch returned nothing for."""
    return {"expired": "expired", "cancelled": "cancelled", "failed": "failed"}.get(batch_status, "not_returned")


def _batch_errors(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    errs = batch.get("errors")
    data = errs.get("data") if isinstance(errs, dict) else None
    return [e for e in data if isinstance(e, dict)][:20] if isinstance(data, list) else []


def _tokens(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _merge(
    work: WorkDir, lines: Sequence[InputLine], output: Path, pending: list[str], notes: list[str]
) -> CollectReport:
    results: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    catalogs: dict[str, Catalog] = {}
    unpriced: set[str] = set()
    counts: Counter[str] = Counter()
    retry: list[InputLine] = []
    total = 0.0
    no_usage = 0
    out_lines: list[str] = []
    for ln in lines:
        req = work.requests.get(ln.custom_id)
        row: dict[str, Any] = {
            "custom_id": ln.custom_id, "line": ln.line, "tier": None, "model": None, "upstream": None,
            "batch_id": None, "status": "not_submitted", "status_code": None, "response": None, "error": None,
            "input_tokens": None, "output_tokens": None, "cost_usd": None,
        }
        if req is not None:
            sid = req["submission"]
            sub = work.submissions.get(sid, {})
            row.update(tier=req["tier"], model=req["model"], upstream=req["upstream"], batch_id=sub.get("batch_id"))
            status = req["status"]
            row["status"] = "pending" if status == "submitted" else status
            if status != "submitted":
                _fill_result(work, row, sid, sub, results)
            if status == "ok":
                cat_key = sub["catalog"]
                if cat_key not in catalogs:
                    catalogs[cat_key] = work.catalog(cat_key)
                tier = catalogs[cat_key].tier(req["tier"])
                i, o = row["input_tokens"], row["output_tokens"]
                cost = None if i is None or o is None else pricing.tier_usd(tier, i, o, batch=True)
                if not tier.has_prices:
                    unpriced.add(tier.name)
                elif cost is None:
                    no_usage += 1
                row["cost_usd"] = cost
                total += cost or 0.0
            if status in RETRY_STATUSES:
                retry.append(ln)
        counts[row["status"]] += 1
        out_lines.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    write_text_atomic(output, "".join(out_lines))
    if unpriced:
        notes.append(
            f"the catalog has no list prices for tier(s) {', '.join(sorted(unpriced))}: their cost_usd is null"
        )
    if no_usage:
        notes.append(f"{no_usage} answer(s) came without usage token counts: their cost_usd is null")
    retry_path: Path | None = None
    if retry:
        retry_path = write_text_atomic(work.retry_path, "".join(ln.raw + "\n" for ln in retry))
    else:
        work.retry_path.unlink(missing_ok=True)
    return CollectReport(
        output=output, counts=counts, cost_usd=total, retry=[ln.custom_id for ln in retry], retry_path=retry_path,
        pending_batches=pending, notes=notes,
    )


def _fill_result(
    work: WorkDir,
    row: dict[str, Any],
    sid: str,
    sub: Mapping[str, Any],
    cache: dict[tuple[str, str], dict[str, dict[str, Any]]],
) -> None:
    line: dict[str, Any] | None = None
    for kind in ("output", "error"):
        key = (sid, kind)
        if key not in cache:
            cache[key] = _read_results(_results_path(work, sid, kind))
        line = cache[key].get(row["custom_id"])
        if line is not None:
            break
    if line is None:
        if not sub:  # an unconfirmed creation that the upstream's listing showed never happened
            row["error"] = {"code": "not_created", "message": "the batch was never created; submit again"}
        elif sub.get("errors"):
            row["error"] = {"code": "batch_failed", "message": "the batch failed validation", "errors": sub["errors"]}
        else:
            row["error"] = {"code": row["status"], "message": f"batch {sub.get('batch_id')} ({sub.get('status')}) "
                            "returned no result for this request"}
        return
    resp = line.get("response") if isinstance(line.get("response"), dict) else None
    err = line.get("error") if isinstance(line.get("error"), dict) else None
    body = resp.get("body") if resp is not None else None
    row["status_code"] = resp.get("status_code") if resp is not None else None
    if row["status"] == "ok":
        row["response"] = body
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict):
            row["input_tokens"] = _tokens(usage.get("prompt_tokens"))
            row["output_tokens"] = _tokens(usage.get("completion_tokens"))
    else:
        row["error"] = err or (body.get("error") if isinstance(body, dict) and body.get("error") else body)

