"""Atomic writes, so a reader (or a process started after a crash) never sees half a file or half a directory.

Every atomic write in tierwise goes through this module:

- **files** (:func:`write_text_atomic`, :func:`write_bytes_atomic`, :func:`write_json_atomic`,
  :func:`write_frame_atomic`, :func:`copy_file_atomic`, and :func:`atomic_open` / :func:`atomic_path` for writers
  that want a handle or a file name): the content goes to a temporary sibling ``.<name>.<random>.tmp`` (created
  exclusively, in the target's folder so the rename stays on one file system), optionally fsynced, then
  ``os.replace`` puts it in place. On any exception the temporary file is deleted and the target is untouched.
  New files get ``mode`` (default ``0o600``, what :func:`tempfile.mkstemp` gives; pass ``0o666`` for the usual
  umask-governed permissions). Temporary names end in ``.tmp`` so a cleaner can recognise debris a killed process
  left behind (:mod:`training.embedding_cache` does).
- **directories** (:func:`build_dir_atomic`): a callback fills a temporary sibling folder, which is then renamed
  into place, either swapping out an existing target or (cache entries) letting the first complete build win.

Nothing here imports more than the standard library: serving code writes through it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"
"""Every temporary file this module creates ends with this suffix."""

PRIVATE = 0o600
"""Default mode of a new file (as :func:`tempfile.mkstemp` creates them)."""

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _create_temp(path: Path, mode: int) -> tuple[int, Path]:
    """Create (exclusively) and open a temporary sibling of ``path``; make the folder first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        try:
            return os.open(tmp, _OPEN_FLAGS, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {path}")  # pragma: no cover - 2^48 names, 100 tries


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, mode: int = PRIVATE, fsync: bool = False) -> Iterator[Path]:
    """Yield the name of an empty temporary sibling of ``path`` for a writer that takes a file name.

    When the block finishes normally the temporary file (fsynced first if ``fsync``) replaces ``path``; when it
    raises, the temporary file is deleted and ``path`` is left as it was.
    """
    target = Path(path)
    fd, tmp = _create_temp(target, mode)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _atomic_handle(path: str | os.PathLike[str], text: bool, mode: int, fsync: bool) -> Iterator[IO[Any]]:
    target = Path(path)
    fd, tmp = _create_temp(target, mode)
    try:
        fh = os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], *, mode: int = PRIVATE, fsync: bool = False) -> Iterator[IO[bytes]]:
    """A binary handle on a temporary sibling of ``path``; it replaces ``path`` when the block finishes normally
    (flushed and fsynced first if ``fsync``), and is deleted when the block raises."""
    with _atomic_handle(path, False, mode, fsync) as fh:
        yield fh


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = PRIVATE, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, mode=mode, fsync=fsync) as fh:
        fh.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, mode: int = PRIVATE, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8, text mode) to ``path`` atomically."""
    with _atomic_handle(path, True, mode, fsync) as fh:
        fh.write(text)
    return Path(path)


def write_json_atomic(
    path: str | os.PathLike[str],
    payload: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = True,
    mode: int = PRIVATE,
    fsync: bool = False,
) -> Path:
    """Write ``payload`` as JSON (UTF-8) to ``path`` atomically."""
    with _atomic_handle(path, True, mode, fsync) as fh:
        json.dump(payload, fh, indent=indent, sort_keys=sort_keys)
    return Path(path)


def copy_file_atomic(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, mode: int = PRIVATE, fsync: bool = False
) -> Path:
    """Copy the contents of ``src`` to ``dst`` atomically (a no-op when both name the same file)."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.resolve() == dst.resolve():
        return dst
    with atomic_path(dst, mode=mode, fsync=fsync) as tmp:
        shutil.copyfile(src, tmp)
    return dst


_FRAME_EXTENSIONS = (".parquet", ".pq", ".csv", ".csv.gz", ".jsonl", ".ndjson")


def write_frame_atomic(frame: Any, out: str | os.PathLike[str], *, mode: int = PRIVATE) -> Path:
    """Write a DataFrame as .parquet/.pq, .csv/.csv.gz or .jsonl/.ndjson (by extension), atomically."""
    out = Path(out)
    name = out.name.lower()
    if not name.endswith(_FRAME_EXTENSIONS):
        raise ValueError(f"{out}: unsupported output extension (use .csv, .csv.gz, .jsonl or .parquet)")
    with atomic_path(out, mode=mode) as tmp:
        if name.endswith((".parquet", ".pq")):
            frame.to_parquet(tmp, index=False)
        elif name.endswith((".csv", ".csv.gz")):
            frame.to_csv(tmp, index=False, compression="gzip" if name.endswith(".gz") else None)
        else:
            frame.to_json(tmp, orient="records", lines=True, force_ascii=True)
    return out


def build_dir_atomic(
    target: str | os.PathLike[str],
    build: Callable[[Path], None],
    *,
    replace: bool = True,
    complete: Callable[[Path], bool] | None = None,
) -> Path:
    """Build a directory with ``build(tmp)`` in a temporary sibling folder, then rename it to ``target``.

    The temporary folder is made by :func:`tempfile.mkdtemp` (``.<name>.<random>``, mode 0700), so the finished
    directory has mode 0700 too. If ``build`` or a rename raises, the temporary folder is removed and an existing
    ``target`` is left as it was.

    ``replace=True`` (a bundle, the service's last-good copy): an existing ``target`` is moved to ``.<name>.old``
    (removing a stale one a killed swap left), the new directory is renamed into place and the old one deleted; if
    that rename fails, the old directory is moved back. Concurrent writers of one target must hold a lock.

    ``replace=False`` (a cache entry; the first complete build wins): the rename fails when another builder got
    there first; then the new build is discarded if ``complete(target)`` is true (default: ``target`` is a
    directory), and the error propagates otherwise.
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        if not replace:
            try:
                os.rename(tmp, final)
            except OSError:
                if not (complete or Path.is_dir)(final):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        elif final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
