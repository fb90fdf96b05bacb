"""Atomic file writes: a temp file in the target folder, then ``os.replace``, so readers never see half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def write_frame_atomic(frame: Any, out: Path) -> Path:
    """Write a DataFrame as .parquet/.pq, .csv/.csv.gz or .jsonl/.ndjson (by extension), atomically."""
    out = Path(out)
    name = out.name.lower()
    if not name.endswith((".parquet", ".pq", ".csv", ".csv.gz", ".jsonl", ".ndjson")):
        raise ValueError(f"{out}: unsupported output extension (use .csv, .csv.gz, .jsonl or .parquet)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        if name.endswith((".parquet", ".pq")):
            frame.to_parquet(tmp, index=False)
        elif name.endswith((".csv", ".csv.gz")):
            frame.to_csv(tmp, index=False, compression="gzip" if name.endswith(".gz") else None)
        else:
            frame.to_json(tmp, orient="records", lines=True, force_ascii=True)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
