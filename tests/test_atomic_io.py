"""router.atomic_io: every helper writes its content, leaves no temporary file behind (on success or when the write
fails midway), replaces an existing target, and leaves the old target intact when a write fails."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from router import atomic_io
from router.atomic_io import (
    TMP_SUFFIX,
    atomic_open,
    atomic_path,
    build_dir_atomic,
    copy_file_atomic,
    write_bytes_atomic,
    write_frame_atomic,
    write_json_atomic,
    write_text_atomic,
)


class Boom(RuntimeError):
    pass


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------------------
def test_text_written_replaced_and_private(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.yaml"  # the folder is created
    assert write_text_atomic(target, "first\n") == target
    assert target.read_text(encoding="utf-8") == "first\n"
    assert _mode(target) == 0o600  # as tempfile.mkstemp made it
    write_text_atomic(target, "zweite Fassung ✓\n")
    assert target.read_text(encoding="utf-8") == "zweite Fassung ✓\n"
    assert _names(target.parent) == ["a.yaml"]


def test_bytes_written_and_replaced(tmp_path: Path) -> None:
    target = tmp_path / "blob.bin"
    write_bytes_atomic(target, b"\x00\x01")
    write_bytes_atomic(target, b"\x02" * 10, fsync=True)
    assert target.read_bytes() == b"\x02" * 10
    assert _names(tmp_path) == ["blob.bin"]


def test_json_format_and_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic_io.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    target = tmp_path / "encoder.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]}, fsync=True)
    assert target.read_text(encoding="utf-8") == json.dumps({"b": 1, "a": [1, 2]}, indent=2, sort_keys=True)
    assert len(synced) == 1
    write_json_atomic(target, {"c": None})
    assert len(synced) == 1  # no fsync unless asked
    assert json.loads(target.read_text(encoding="utf-8")) == {"c": None}
    assert _names(tmp_path) == ["encoder.json"]


def test_mode_option(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "shared.bin", b"x", mode=0o666)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "shared.bin") == 0o644


def test_copy_file(tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("payload", encoding="utf-8")
    dst = tmp_path / "out" / "dst.txt"
    copy_file_atomic(src, dst)
    assert dst.read_text(encoding="utf-8") == "payload"
    src.write_text("newer", encoding="utf-8")
    copy_file_atomic(src, dst, fsync=True)
    assert dst.read_text(encoding="utf-8") == "newer"
    copy_file_atomic(src, src)  # the same file: a no-op, not a truncation
    assert src.read_text(encoding="utf-8") == "newer"
    assert _names(dst.parent) == ["dst.txt"]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".csv.gz", ".jsonl"])
def test_frame_round_trip_and_replace(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"log{suffix}"
    write_frame_atomic(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), out)
    frame = pd.DataFrame({"a": [3], "b": ["z"]})
    write_frame_atomic(frame, out)
    if suffix == ".parquet":
        back = pd.read_parquet(out)
    elif suffix == ".jsonl":
        back = pd.read_json(out, lines=True)
    else:
        back = pd.read_csv(out)
    pd.testing.assert_frame_equal(back, frame)
    assert _names(tmp_path) == [out.name]


def test_frame_rejects_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported output extension"):
        write_frame_atomic(pd.DataFrame({"a": [1]}), tmp_path / "log.xlsx")
    assert _names(tmp_path) == []


class _Exploding:
    """A 'frame' whose writer writes half a file, then fails."""

    def to_csv(self, path: str, **_: object) -> None:
        Path(path).write_text("half,", encoding="utf-8")
        raise Boom("disk full")


def _fail_text(p: Path) -> None:
    with atomic_io._atomic_handle(p, True, 0o600, False) as fh:
        fh.write("half")
        raise Boom("mid-write")


def _fail_open(p: Path) -> None:
    with atomic_open(p, fsync=True) as fh:
        fh.write(b"half")
        raise Boom("mid-write")


def _fail_path(p: Path) -> None:
    with atomic_path(p) as tmp:
        tmp.write_bytes(b"half")
        raise Boom("mid-write")


def _fail_frame(p: Path) -> None:
    write_frame_atomic(_Exploding(), p.with_suffix(".csv"))


def _fail_copy(p: Path) -> None:
    copy_file_atomic(p.with_name("missing-source"), p)


@pytest.mark.parametrize("fail", [_fail_text, _fail_open, _fail_path, _fail_frame, _fail_copy])
def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path, fail: Callable[[Path], None]) -> None:
    target = tmp_path / "t.csv"
    target.write_text("old", encoding="utf-8")
    with pytest.raises((Boom, FileNotFoundError)):
        fail(target)
    assert target.read_text(encoding="utf-8") == "old"
    assert _names(tmp_path) == ["t.csv"]


def test_failed_replace_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: object, dst: object) -> None:
        raise PermissionError("replace refused")

    monkeypatch.setattr(atomic_io.os, "replace", refuse)
    with pytest.raises(PermissionError):
        write_text_atomic(tmp_path / "a.txt", "new")
    assert _names(tmp_path) == []


def test_temp_names_are_hidden_siblings_ending_in_tmp(tmp_path: Path) -> None:
    seen: list[Path] = []
    with atomic_open(tmp_path / "x.vec.npy") as fh:
        fh.write(b"1")
        seen += list(tmp_path.iterdir())
    assert len(seen) == 1
    assert seen[0].name.startswith(".x.vec.npy.") and seen[0].name.endswith(TMP_SUFFIX)


# ------------------------------------------------------------------------------------------------------------
# directories
# ------------------------------------------------------------------------------------------------------------
def _filler(text: str) -> Callable[[Path], None]:
    def build(d: Path) -> None:
        (d / "sub").mkdir()
        (d / "sub" / "file.txt").write_text(text, encoding="utf-8")

    return build


def test_dir_built_and_replaced(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "bundle"
    assert build_dir_atomic(target, _filler("one")) == target
    assert (target / "sub" / "file.txt").read_text(encoding="utf-8") == "one"
    build_dir_atomic(target, _filler("two"))
    assert (target / "sub" / "file.txt").read_text(encoding="utf-8") == "two"
    assert _names(target.parent) == ["bundle"]  # neither the temp folder nor the .old copy remains


def test_dir_replace_removes_a_stale_old_copy(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    build_dir_atomic(target, _filler("one"))
    stale = tmp_path / ".bundle.old"
    stale.mkdir()
    (stale / "junk").write_text("left by a killed swap", encoding="utf-8")
    build_dir_atomic(target, _filler("two"))
    assert _names(tmp_path) == ["bundle"]


def test_failed_dir_build_leaves_old_target_intact(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    build_dir_atomic(target, _filler("good"))

    def broken(d: Path) -> None:
        _filler("half")(d)
        raise Boom("build failed")

    for replace in (True, False):
        with pytest.raises(Boom):
            build_dir_atomic(target, broken, replace=replace)
        assert (target / "sub" / "file.txt").read_text(encoding="utf-8") == "good"
        assert _names(tmp_path) == ["bundle"]


def test_failed_dir_swap_puts_old_target_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "bundle"
    build_dir_atomic(target, _filler("good"))
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(src).name.startswith(".bundle.") and not Path(src).name.endswith(".old"):
            raise OSError("rename of the new build failed")
        real_replace(src, dst)

    monkeypatch.setattr(atomic_io.os, "replace", replace)
    with pytest.raises(OSError, match="new build failed"):
        build_dir_atomic(target, _filler("new"))
    assert (target / "sub" / "file.txt").read_text(encoding="utf-8") == "good"
    assert _names(tmp_path) == ["bundle"]


def test_no_replace_first_complete_build_wins(tmp_path: Path) -> None:
    target = tmp_path / "entry"

    def done(d: Path) -> bool:
        return (d / "sub" / "file.txt").is_file()

    build_dir_atomic(target, _filler("winner"), replace=False, complete=done)

    def racing(d: Path) -> None:  # a concurrent builder finishes while this one is still building
        _filler("loser")(d)

    assert build_dir_atomic(target, racing, replace=False, complete=done) == target
    assert (target / "sub" / "file.txt").read_text(encoding="utf-8") == "winner"
    assert _names(tmp_path) == ["entry"]


def test_no_replace_incomplete_existing_target_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    target.mkdir()
    (target / "partial").write_text("no marker", encoding="utf-8")
    with pytest.raises(OSError):
        build_dir_atomic(target, _filler("new"), replace=False, complete=lambda d: (d / "marker").is_file())
    assert _names(target) == ["partial"]
    assert _names(tmp_path) == ["entry"]


def test_no_replace_defaults_to_an_existing_directory_counting_as_complete(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    target.mkdir()
    (target / "x").write_text("kept", encoding="utf-8")
    build_dir_atomic(target, _filler("new"), replace=False)
    assert _names(target) == ["x"] and _names(tmp_path) == ["entry"]
