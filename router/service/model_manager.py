"""The served model's lifecycle: load it, keep a last-good copy on disk, fall back to that copy.

After every successful registry load the bundle is copied atomically to ``model_cache_dir`` (the last-good copy), so
a start while the registry is unreachable can still serve (degraded). The copy records which model it is (registry
name, version, URI) and is used only for that model. By default each configured model (URI and tracking store) has
its own folder under ``HOME/serving/last-good/``, so services of different models sharing one ``TIERWISE_HOME`` keep
one copy each instead of overwriting a single one (and never serve one model's copy for another). A ``sqlite:///``
store that does not exist is refused (a mistyped path would otherwise create an empty store). Loading blocks: call
it from a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from router.atomic_io import build_dir_atomic
from router.service.errors import StartupError, one_line, redact
from router.service.settings import ServiceSettings
from router.settings import resolve_tracking_uri, sqlite_store_path

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
        self.threshold_table = r.threshold_table
        cat = r.catalog
        self.tier_names = list(cat.tier_names)
        self.tier_headers = [header_value(t.name) for t in cat.tiers]
        self.model_headers = [header_value(t.model) for t in cat.tiers]
        enc = r.meta.encoder or {}
        self.encoder = f"{enc.get('kind', '?')}:{enc.get('source', '?')}"

    @property
    def name(self) -> str | None:
        return self.router.ref.name

    @property
    def version(self) -> str | None:
        return self.router.ref.version


def _norm_path(path: str) -> str:
    """``path`` made absolute and normalised on its text alone (no file system access)."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


class StoreMissingError(FileNotFoundError):
    """The configured SQLite tracking store does not exist (a configuration error, not an outage)."""


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
        self.cache = settings.model_cache_dir.expanduser() if settings.model_cache_dir else self.default_cache_dir()

    @property
    def tracking_uri(self) -> str:
        """The store registry URIs resolve against: TIERWISE_TRACKING_URI > MLFLOW_TRACKING_URI > HOME/mlflow.db."""
        return resolve_tracking_uri(self.settings.tracking_uri, home=self.settings.home)

    def default_cache_dir(self) -> Path:
        """``HOME/serving/last-good/<model name>-<digest>``: one folder per configured model URI and tracking store."""
        from router.core import parse_registry_uri

        name = parse_registry_uri(self.model_uri)[0] or Path(self.model_uri.rstrip("/")).name or "model"
        key = f"{self.tracking_uri}\n{self.model_uri}".encode()
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60].strip(".") or "model"
        return self.settings.last_good_root / f"{safe}-{hashlib.sha256(key).hexdigest()[:12]}"

    def check_store(self) -> str:
        """The tracking URI, once a SQLite store is known to exist (MLflow would create an empty one silently)."""
        uri = self.tracking_uri
        path = sqlite_store_path(uri)
        if path is not None and not path.is_file():
            raise StoreMissingError(
                f"the MLflow tracking store {path} does not exist (tracking URI {redact(uri)}): check "
                "TIERWISE_TRACKING_URI / MLFLOW_TRACKING_URI, or train and register a model first (tierwise train); "
                "the service never creates an empty store"
            )
        return uri

    def reload_refusal(self, uri: str) -> str | None:
        """Why ``POST /admin/reload`` may not load ``uri`` (None: allowed). Decided on the text alone, so a refused
        URI touches no disk: registry URIs and the configured model URI pass; other paths need
        ``TIERWISE_ADMIN_ALLOW_PATHS``."""
        if self.settings.admin_allow_paths or uri.startswith("models:/"):
            return None
        from router.core import is_remote_uri

        configured = self.settings.model_uri
        if uri == configured:
            return None
        if not is_remote_uri(uri) and not is_remote_uri(configured) and _norm_path(uri) == _norm_path(configured):
            return None
        return (
            "model_uri must be a registry URI (models:/NAME@ALIAS or models:/NAME/VERSION) or the configured model "
            "URI; set TIERWISE_ADMIN_ALLOW_PATHS=true to allow reloads from other paths and URIs"
        )

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

        tracking_uri = self.check_store()
        router = Router.load(uri, tracking_uri=tracking_uri, threads=threads, on_download=keep)
        return LoadedModel(router, "registry", uri)

    @staticmethod
    def _warm(router: Any) -> None:
        router.predict_proba_array(["warm-up request", "a second, slightly longer warm-up request."], [None, "plan"])

    def save_last_good(self, router: Any, uri: str) -> Path:
        """Copy the router's bundle to the cache dir (temp dir + rename) with a source.json; return the bundle path."""
        ref = router.ref
        info = {
            "uri": uri,  # the model this copy is for (load_last_good serves it for no other)
            "name": ref.name,
            "version": ref.version,
            "tracking_uri": redact(self.tracking_uri),
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
            mismatch = self._copy_mismatch(info)
            if mismatch:
                raise LookupError(f"the last-good copy in {self.cache} {mismatch}")
            ref = ModelRef(uri=str(info.get("uri") or self.cache), name=info.get("name"), version=info.get("version"))
            router = Router.from_bundle(self.cache / "bundle", threads=self.settings.encoder_threads, ref=ref)
        self._warm(router)
        detail = f"registry unavailable ({why}); serving the last-good copy saved at {info.get('saved_at')}"
        return LoadedModel(router, "last-good-copy", self.model_uri, degraded=True, detail=detail)

    def _copy_mismatch(self, info: dict[str, Any]) -> str | None:
        """Why the last-good copy described by ``info`` is not a copy of the configured model (None: it is)."""
        from router.core import parse_registry_uri

        saved_uri = str(info.get("uri") or "?")
        saved_name, saved_version = info.get("name"), info.get("version")
        what = f"{saved_name}/{saved_version}" if saved_name and saved_version else saved_uri
        name, version, _ = parse_registry_uri(self.model_uri)
        if name is not None:
            if saved_name != name:
                return f"is of model {what} ({redact(saved_uri)}), not of the configured {redact(self.model_uri)}"
            if version is not None and str(saved_version) != version:
                return f"is of version {saved_version} of {name}, but the configured URI pins version {version}"
            return None
        if saved_uri != self.model_uri:
            return f"is of {redact(saved_uri)}, not of the configured {redact(self.model_uri)}"
        return None

    def load_initial(self) -> LoadedModel:
        uri = self.model_uri
        shown = redact(uri)
        try:
            return self.load(uri)
        except StoreMissingError as exc:  # a configuration error: no last-good copy stands in for it
            raise StartupError(f"cannot load model {shown}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            primary = one_line(exc)
            if self.is_local(uri):
                raise StartupError(f"cannot load model {shown}: {primary}") from exc
            log.warning("cannot load %s (%s); trying the last-good copy in %s", shown, primary, self.cache)
            try:
                model = self.load_last_good(primary)
            except Exception as exc2:  # noqa: BLE001
                raise StartupError(
                    f"cannot load model {shown} ({primary}) and no usable last-good copy in {self.cache} "
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
        return alias_version(name, alias, tracking_uri=self.check_store())
