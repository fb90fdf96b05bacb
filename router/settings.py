"""Where tierwise keeps its state, read from the environment (``TIERWISE_*``) with pydantic-settings.

``TIERWISE_HOME`` (default ``~/.tierwise``) holds the default MLflow store (``mlflow.db`` + ``mlartifacts/``),
the embedding and ONNX caches and the service's last-good model copy. ``MLFLOW_TRACKING_URI`` (or an explicit
option) points training and serving at a real MLflow server instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class HomeSettings(BaseSettings):
    """Base settings shared by the CLI, the pipeline and the service."""

    model_config = SettingsConfigDict(env_prefix="TIERWISE_", extra="ignore", populate_by_name=True)

    home: Path = Field(default_factory=lambda: Path.home() / ".tierwise", description="State directory.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (overrides MLFLOW_TRACKING_URI).")
    cache_dir_override: Path | None = Field(
        None, alias="TIERWISE_CACHE_DIR", description="Embedding / ONNX cache directory (default: HOME/cache)."
    )

    @property
    def cache_dir(self) -> Path:
        return (self.cache_dir_override or self.home / "cache").expanduser()


def home_settings() -> HomeSettings:
    return HomeSettings()


def default_tracking_uri(home: Path | None = None) -> str:
    """The embedded default store: a SQLite file under ``TIERWISE_HOME`` (absolute URI, four slashes)."""
    home = (home or home_settings().home).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def resolve_tracking_uri(explicit: str | None = None, home: Path | None = None) -> str:
    """Explicit option > ``TIERWISE_TRACKING_URI`` > ``MLFLOW_TRACKING_URI`` > local SQLite under ``home`` (default:
    ``TIERWISE_HOME``)."""
    if explicit:
        return explicit
    s = home_settings()
    if s.tracking_uri:
        return s.tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return default_tracking_uri(home or s.home)


def sqlite_store_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` tracking URI (relative to the cwd, as SQLAlchemy reads it); None for
    other stores and in-memory databases."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def default_artifact_root(home: Path | None = None) -> str:
    """Artifact location for experiments created in the default SQLite store (absolute, not cwd-relative)."""
    home = (home or home_settings().home).expanduser().resolve()
    (home / "mlartifacts").mkdir(parents=True, exist_ok=True)
    return (home / "mlartifacts").as_uri()
