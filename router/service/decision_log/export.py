"""Reading the decision log: the training export (``tierwise decisions export``), the analysis iterators
(``training.reports``, ``tierwise decisions savings``) and the stored catalogs. Every function takes a path or a URL
and only reads (a SQLite file is opened read-only); a log written before migrations is read as it is.

:func:`export_log` turns decisions + feedback into the canonical long log format that ``training.readers.read_log``
(and so ``tierwise train``) reads: one row per feedback. Training needs the text, so the export contains only
feedback whose decision stored its prompt, and says how many rows it left out. :func:`export_for_training` also
writes the catalog beside the output and refuses to write a file nobody can train on.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from router.limits import ATTEMPT_LIMITS, attempt_number_problem
from router.log_format import CANONICAL_COLUMNS, PROMPT_ID_HEX
from router.service.decision_log import store
from router.service.decision_log.retention import utc_iso
from router.service.decision_log.schema import (
    CALL_COLUMNS,
    DECISION_COLUMNS,
    FEEDBACK_READ_COLUMNS,
    TABLES,
    catalogs,
    decisions,
    feedback,
)

Target = str | os.PathLike[str]


class NothingToExport(ValueError):
    """The selected feedback holds no row training could use (the message says why)."""


class CatalogMismatch(ValueError):
    """The exported rows cannot be tied to one catalog (none stored, or different ones)."""


@dataclass
class ExportSummary:
    feedback_rows: int
    exported_rows: int
    without_prompt: int
    without_decision: int
    invalid_numbers: int = 0
    unknown_model: int = 0
    router_versions: list[str] = field(default_factory=list)
    catalog_path: Path | None = None

    def describe(self) -> str:
        left_out = (
            (
                self.without_prompt,
                "their decision stored no prompt text (the service stores only a hash unless "
                "TIERWISE_STORE_PROMPTS=true; training needs the text)",
            ),
            (self.without_decision, "their request_id has no logged decision"),
            (
                self.invalid_numbers,
                "they hold a non-finite or out-of-range number (score, tokens, cost or latency; written before the "
                "service refused them)",
            ),
            (self.unknown_model, "their model is not in the exported catalog"),
        )
        parts = [f"exported {self.exported_rows} of {self.feedback_rows} feedback row(s)"]
        parts += [f"{n} left out because {why}" for n, why in left_out if n]
        if self.catalog_path is not None:
            parts.append(f"catalog of {', '.join(self.router_versions)} written to {self.catalog_path}")
        return "; ".join(parts)


EXPORT_COLUMNS = (
    *(c for c in CANONICAL_COLUMNS if c != "split"),
    "request_id",
    "tier",
    "routed_tier",
    "tenant",
    "router_version",
)
"""The export's columns: the canonical long format's (:data:`router.log_format.CANONICAL_COLUMNS`; the service
assigns no split) and the decision's identifiers. :func:`export_rows` selects them in this order."""


@contextlib.contextmanager
def reading(target: Target) -> Iterator[sa.Connection]:
    """A read-only connection to the log at ``target`` (FileNotFoundError for a SQLite file that does not exist;
    :class:`~router.service.decision_log.store.DecisionLogUnavailable` for a database that cannot be reached)."""
    engine = store.make_engine(store.resolve(target), readonly=True)
    try:
        try:
            conn = engine.connect()
        except sa.exc.DBAPIError as exc:
            raise store.unavailable(target, exc) from exc
        with conn:
            yield conn
    finally:
        engine.dispose()


def _tables(conn: sa.Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names())


def _require_log(conn: sa.Connection, target: Target) -> None:
    if not {"decisions", "feedback"} <= _tables(conn):
        raise ValueError(
            f"{store.describe(target)} holds no decision log (no decisions / feedback tables): the service creates "
            "them when it starts, or run tierwise db upgrade"
        )


def _valid_numbers(rec: dict[str, Any]) -> bool:
    return all(attempt_number_problem(col, rec[col]) is None for col in ATTEMPT_LIMITS)


def export_rows(
    target: Target, *, router_version: str | None = None, since: str | None = None
) -> tuple[list[dict[str, Any]], ExportSummary]:
    """Feedback joined with its decision, one dict per feedback row, in the canonical long format (+ extras).

    ``router_version`` keeps only decisions of that version; ``since`` only feedback recorded at or after that
    time. Rows holding a non-finite or out-of-range number (logs written before the API refused them) are left out
    and counted: an export never carries ``inf``."""
    f, d = feedback, decisions
    where: list[Any] = []
    if router_version is not None:
        where.append(d.c.router_version == router_version)
    if since is not None:
        where.append(f.c.created_at >= utc_iso(since))
    joined = f.outerjoin(d, d.c.request_id == f.c.request_id)
    count = sa.select(sa.func.count()).select_from(joined)
    picked = (
        sa.select(
            d.c.prompt_hash,
            d.c.prompt,
            f.c.model,
            f.c.score,
            f.c.cost_usd,
            f.c.input_tokens,
            f.c.output_tokens,
            f.c.latency_ms,
            d.c.task,
            d.c.role,
            f.c.created_at,
            f.c.request_id,
            f.c.tier,
            d.c.tier,
            d.c.tenant,
            d.c.router_version,
        )
        .select_from(f.join(d, d.c.request_id == f.c.request_id))
        .where(*where)
        .order_by(f.c.id)
    )
    rows: list[dict[str, Any]] = []
    no_prompt = invalid = 0
    with reading(target) as conn:
        _require_log(conn, target)
        total = conn.execute(count.where(*where)).scalar_one()
        orphan = conn.execute(count.where(d.c.request_id.is_(None), *where)).scalar_one()
        for r in conn.execution_options(yield_per=5000).execute(picked):
            if r[1] is None:
                no_prompt += 1
                continue
            rec = dict(zip(EXPORT_COLUMNS, r, strict=True))
            if not _valid_numbers(rec):
                invalid += 1
                continue
            rec["prompt_id"] = str(r[0])[:PROMPT_ID_HEX]  # the first hex digits of prompt_hash (SHA-256)
            rows.append(rec)
    versions = sorted({str(r["router_version"]) for r in rows})
    return rows, ExportSummary(int(total), len(rows), no_prompt, int(orphan), invalid, 0, versions)


def export_log(target: Target, out: str | Path | None = None) -> tuple[Any, ExportSummary]:
    """Export to a pandas DataFrame (and write it to ``out``: .csv, .jsonl or .parquet, atomically)."""
    import pandas as pd

    rows, summary = export_rows(target)
    frame = pd.DataFrame(rows, columns=list(EXPORT_COLUMNS))
    if out is not None:
        from router.atomic_io import write_frame_atomic

        write_frame_atomic(frame, Path(out))
    return frame, summary


def stored_catalogs(target: Target) -> dict[str, str]:
    """Catalog YAML per router version, as the service stored them (empty for logs older than the table)."""
    with reading(target) as conn:
        if "catalogs" not in _tables(conn):
            return {}
        return {str(v): str(c) for v, c in conn.execute(sa.select(catalogs.c.router_version, catalogs.c.catalog))}


def _nothing_message(where: str, summary: ExportSummary, filtered: bool) -> str:
    scope = " (with these --router-version / --since filters)" if filtered else ""
    if summary.feedback_rows == 0:
        return f"nothing to train on: the decision log {where} has no feedback{scope} (POST /v1/feedback records it)"
    if summary.without_prompt and summary.without_prompt + summary.without_decision >= summary.feedback_rows:
        return (
            f"nothing to train on: none of the {summary.feedback_rows} feedback row(s){scope} can be trained on, "
            "because their decisions stored only a SHA-256 of the prompt, not its text. Prompts stay private by "
            "default; to train on feedback, run the service with TIERWISE_STORE_PROMPTS=true and export the "
            "feedback collected after that"
        )
    return f"nothing to train on{scope}: {summary.describe()}"


def export_for_training(
    target: Target,
    out: str | Path,
    *,
    router_version: str | None = None,
    since: str | None = None,
    catalog: str | Path | None = None,
) -> tuple[Any, ExportSummary]:
    """``tierwise decisions export``: the training log at ``out`` plus the catalog it was routed with beside it
    (:func:`router.catalog.catalog_sidecar_path`), both written atomically.

    Raises :class:`NothingToExport` (and writes nothing) when no row can be trained on, and
    :class:`CatalogMismatch` when the rows span router versions whose catalogs differ or whose catalog the log does
    not hold (``catalog``: the catalog YAML to use for versions logged before the service stored catalogs)."""
    import pandas as pd
    import yaml

    from router.atomic_io import write_frame_atomic, write_text_atomic
    from router.catalog import Catalog, catalog_sidecar_path

    out = Path(out)
    where = store.describe(target)
    rows, summary = export_rows(target, router_version=router_version, since=since)
    filtered = router_version is not None or since is not None
    if not rows:
        raise NothingToExport(_nothing_message(where, summary, filtered))
    stored = stored_catalogs(target)
    given = Catalog.from_yaml(catalog) if catalog is not None else None
    by_version: dict[str, Catalog] = {}
    missing = []
    for v in summary.router_versions:
        if v in stored:
            by_version[v] = Catalog.from_dict(yaml.safe_load(stored[v]), source=f"{where}: catalog of {v}")
        elif given is not None:
            by_version[v] = given
        else:
            missing.append(v)
    if missing:
        raise CatalogMismatch(
            f"the decision log holds no catalog for router version(s) {', '.join(missing)} (logged before the "
            "service stored catalogs): pass the catalog the service routed with (--catalog PATH), or export other "
            "versions only (--router-version VERSION)"
        )
    groups: dict[str, list[str]] = {}
    first: dict[str, Catalog] = {}
    for v, cat in by_version.items():
        key = cat.to_yaml()
        groups.setdefault(key, []).append(v)
        first.setdefault(key, cat)
    if len(groups) > 1:
        shown = "; ".join(f"{first[k].name!r}: {', '.join(vs)}" for k, vs in groups.items())
        raise CatalogMismatch(
            f"the exported rows were routed with different catalogs ({shown}); train on one catalog at a time: "
            "export with --router-version VERSION (or --since DATE to keep only recent feedback)"
        )
    (cat,) = first.values()
    models = set(cat.models)
    kept = [r for r in rows if r["model"] in models]
    summary.unknown_model = len(rows) - len(kept)
    summary.exported_rows = len(kept)
    if not kept:
        raise NothingToExport(_nothing_message(where, summary, filtered))
    summary.catalog_path = catalog_sidecar_path(out)
    # the catalog first: a reader that finds the new log also finds its catalog
    write_text_atomic(summary.catalog_path, cat.to_yaml())
    frame = pd.DataFrame(kept, columns=list(EXPORT_COLUMNS))
    write_frame_atomic(frame, out)
    return frame, summary


def _iter_rows(target: Target, table: str, columns: Sequence[str], order: str) -> Iterator[dict[str, Any]]:
    """Every row of ``table`` (none when the log predates it), oldest first; a column an old log lacks is None."""
    t = TABLES[table]
    with reading(target) as conn:
        if table not in _tables(conn):
            return
        have = {c["name"] for c in sa.inspect(conn).get_columns(table)}
        picked = [t.c[c] if c in have else sa.null().label(c) for c in columns]
        query = sa.select(*picked).order_by(t.c[order])
        for r in conn.execution_options(yield_per=5000).execute(query):
            yield dict(zip(columns, r, strict=True))


def iter_decisions(target: Target) -> Iterable[dict[str, Any]]:
    """All decisions (for analysis), oldest first."""
    return _iter_rows(target, "decisions", DECISION_COLUMNS, "created_at")


def iter_calls(target: Target) -> Iterable[dict[str, Any]]:
    """The gateway's calls (``/v1/chat/completions`` outcomes), oldest first; none in a log older than the gateway."""
    return _iter_rows(target, "calls", CALL_COLUMNS, "created_at")


def iter_feedback(target: Target) -> Iterable[dict[str, Any]]:
    """All feedback rows without their metadata (for analysis), in the order they were written."""
    return _iter_rows(target, "feedback", FEEDBACK_READ_COLUMNS, "id")


def connect(path: str | os.PathLike[str], *, readonly: bool = False, busy_seconds: float = 10.0) -> sqlite3.Connection:
    """A plain ``sqlite3`` connection to a SQLite decision log, for tools and tests (the service and the functions
    above go through SQLAlchemy). Without ``readonly`` the log is created or migrated first."""
    url = store.resolve(path)
    file = store.sqlite_file(url)
    if file is None:
        raise ValueError(f"connect() opens SQLite files only, not {store.describe(path)}")
    if readonly:
        if not file.is_file():
            raise FileNotFoundError(f"decision log not found: {file}")
        conn = sqlite3.connect(
            f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=busy_seconds, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(busy_seconds * 1000)}")
        return conn
    from router.service.decision_log.migrate import upgrade

    engine = store.make_engine(url, busy_seconds=busy_seconds)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    conn = sqlite3.connect(str(file), timeout=busy_seconds, check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_seconds * 1000)}")
    return conn
