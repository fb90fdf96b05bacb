"""The served model's lifecycle: load it, keep a last-good copy on disk, fall back to that copy.

After every successful registry load the bundle is copied atomically to ``model_cache_dir`` (the last-good copy), so
a start while the registry is unreachable can still serve (degraded). Loading blocks: call it from a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from router import pricing
from router.atomic_io import build_dir_atomic
from router.service.errors import StartupError, one_line
from router.service.settings import ServiceSettings

log = logging.getLogger("tierwise.service")

SOURCE_FILE = "source.json"


def header_value(value: object) -> str:
    """``value`` as an HTTP header value (percent-encoded when it is not ASCII)."""
    s = str(value)
    return s if s.isascii() else quote(s, safe=" /@:,.-_")


@dataclass
class LoadedModel:
    """A router plus where it came from and what the service precomputes for it."""

    router: Any
    source: str  # registry | local | last-good-copy
    uri: str
    degraded: bool = False
    detail: str | None = None
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        r = self.router
        self.label = r.ref.label
        self.label_header = header_value(self.label)
        training = r.meta.training or {}
        self.chars_per_token = pricing.resolve_chars_per_token(training.get("chars_per_token"))
        table = training.get("threshold_table") or []
        rows: list[tuple[float, float]] = []
        for row in table if isinstance(table, list) else []:
            try:
                rows.append((float(row["quality_target"]), float(row["threshold"])))
            except (KeyError, TypeError, ValueError):
                continue
        self.threshold_table = sorted(rows)
        cat = r.catalog
        self.tier_names = list(cat.tier_names)
        self.tier_headers = [header_value(t.name) for t in cat.tiers]
        self.model_headers = [header_value(t.model) for t in cat.tiers]
        self.out_tokens = [pricing.tier_output_tokens(t) for t in cat.tiers]  # a catalog's 0 stays 0
        enc = r.meta.encoder or {}
        self.encoder = f"{enc.get('kind', '?')}:{enc.get('source', '?')}"

    @property
    def name(self) -> str | None:
        return self.router.ref.name

    @property
    def version(self) -> str | None:
        return self.router.ref.version


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ModelManager:
    """Loads routers from the registry / a directory / the last-good copy (blocking: call from a thread)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.model_uri = settings.model_uri
        self.cache = settings.model_cache_path

    @property
    def _lock_path(self) -> Path:
        return self.cache.parent / f".{self.cache.name}.lock"

    @staticmethod
    def is_local(uri: str) -> bool:
        from router.core import local_model_dir

        return local_model_dir(uri) is not None

    def load(self, uri: str | None = None) -> LoadedModel:
        """Load ``uri`` (default: the configured one), warm it up, and refresh the last-good copy."""
        from router.core import Router

        uri = uri or self.model_uri
        threads = self.settings.encoder_threads
        if self.is_local(uri):
            router = Router.load(uri, threads=threads)
            self._warm(router)
            return LoadedModel(router, "local", uri)

        def keep(downloaded: Any) -> None:
            # warm up first: a model that cannot answer never becomes the last-good copy
            self._warm(downloaded)
            try:
                downloaded.bundle_dir = self.save_last_good(downloaded, uri)
            except Exception as exc:  # noqa: BLE001 - serving works without the copy
                log.warning("could not refresh the last-good model copy in %s: %s", self.cache, one_line(exc))

        router = Router.load(uri, tracking_uri=self.settings.tracking_uri, threads=threads, on_download=keep)
        return LoadedModel(router, "registry", uri)

    @staticmethod
    def _warm(router: Any) -> None:
        router.predict_proba_array(["warm-up request", "a second, slightly longer warm-up request."], [None, "plan"])

    def save_last_good(self, router: Any, uri: str) -> Path:
        """Copy the router's bundle to the cache dir (temp dir + rename) with a source.json; return the bundle path."""
        ref = router.ref
        info = {
            "uri": uri,
            "name": ref.name,
            "version": ref.version,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with _file_lock(self._lock_path):
            current = self._read_source()
            if (
                current is not None
                and current.get("name") == ref.name
                and current.get("version") == ref.version
                and (ref.version is not None or current.get("uri") == uri)
                and (self.cache / "bundle").is_dir()
            ):
                return self.cache / "bundle"

            def build(tmp: Path) -> None:
                shutil.copytree(router.bundle_dir, tmp / "bundle")
                (tmp / SOURCE_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")

            build_dir_atomic(self.cache, build)
        log.info("saved last-good copy of %s to %s", router.ref.label, self.cache)
        return self.cache / "bundle"

    def _read_source(self) -> dict[str, Any] | None:
        p = self.cache / SOURCE_FILE
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def load_last_good(self, why: str) -> LoadedModel:
        from router.core import ModelRef, Router

        with _file_lock(self._lock_path):
            info = self._read_source()
            if info is None or not (self.cache / "bundle").is_dir():
                raise FileNotFoundError(f"no last-good copy in {self.cache}")
            ref = ModelRef(uri=str(info.get("uri") or self.cache), name=info.get("name"), version=info.get("version"))
            router = Router.from_bundle(self.cache / "bundle", threads=self.settings.encoder_threads, ref=ref)
        self._warm(router)
        detail = f"registry unavailable ({why}); serving the last-good copy saved at {info.get('saved_at')}"
        return LoadedModel(router, "last-good-copy", self.model_uri, degraded=True, detail=detail)

    def load_initial(self) -> LoadedModel:
        uri = self.model_uri
        try:
            return self.load(uri)
        except Exception as exc:  # noqa: BLE001
            primary = one_line(exc)
            if self.is_local(uri):
                raise StartupError(f"cannot load model {uri}: {primary}") from exc
            log.warning("cannot load %s (%s); trying the last-good copy in %s", uri, primary, self.cache)
            try:
                model = self.load_last_good(primary)
            except Exception as exc2:  # noqa: BLE001
                raise StartupError(
                    f"cannot load model {uri} ({primary}) and no usable last-good copy in {self.cache} "
                    f"({one_line(exc2)})"
                ) from exc2
            log.warning("DEGRADED: %s", model.detail)
            return model

    def alias_version(self) -> str | None:
        """The version the configured alias points to now (None for URIs without an alias)."""
        from router.core import alias_version, parse_registry_uri

        name, _, alias = parse_registry_uri(self.model_uri)
        if name is None or alias is None:
            return None
        return alias_version(name, alias, tracking_uri=self.settings.tracking_uri)
