"""Configuration of the routing service (``tierwise serve``), read from ``TIERWISE_*`` environment variables.

Every field is an environment variable with the ``TIERWISE_`` prefix (``model_uri`` -> ``TIERWISE_MODEL_URI``);
``tierwise serve`` options override them. Paths default to places under ``TIERWISE_HOME`` (``~/.tierwise``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from router.settings import HomeSettings

STATE_DIR_ENV = "TIERWISE_SERVE_STATE_DIR"  # set by `tierwise serve`: a worker's start-up error lands there


def _fspath(value: Any) -> Any:
    """A path given from Python (``Path``) is taken as its text, as a path from the environment is."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


class ServiceSettings(HomeSettings):
    """Settings of the HTTP routing service."""

    model_config = SettingsConfigDict(
        env_prefix="TIERWISE_", extra="ignore", populate_by_name=True, protected_namespaces=()
    )

    model_uri: str = Field(
        "models:/tierwise@champion",
        description="Router to serve: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a local directory.",
    )
    host: str = Field("127.0.0.1", description="Interface to listen on (tierwise serve).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (tierwise serve).")
    workers: int = Field(1, ge=1, description="uvicorn worker processes (each loads its own copy of the model).")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for POST /admin/reload; unset = admin endpoints disabled (403)."
    )
    poll_seconds: float = Field(
        0.0, ge=0, description="Check the model alias every N seconds and reload when it moves (0 = never)."
    )
    decision_log: Annotated[str | None, BeforeValidator(_fspath)] = Field(
        None,
        description="Decision log: a SQLite file path (default: HOME/decisions.db) or a database URL, e.g. "
        "postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE (one store for every replica).",
    )
    decision_retention_days: int | None = Field(
        None,
        ge=1,
        description="Delete decisions older than this many days (with all their feedback, even feedback recorded "
        "later) and gateway calls older than it; the service checks hourly. Unset = keep everything.",
    )
    store_prompts: bool = Field(
        False, description="Store prompt text in the decision log (needed to train on it); else a SHA-256 only."
    )
    durable_feedback: bool = Field(
        True,
        description="Answer POST /v1/feedback only after its row is committed to the decision log (a crash then "
        "loses no acknowledged feedback); false = answer once queued (commits follow within ~20 ms).",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest accepted request body (413 above).")
    max_batch_items: int = Field(1000, ge=1, description="Most requests in one POST /v1/route/batch call.")
    max_plan_steps: int = Field(200, ge=1, description="Most steps in one POST /v1/route/plan call.")
    max_chunk_chars: int = Field(
        65_536,
        ge=1024,
        description="Batch and plan calls run in chunks of at most max_batch_size prompts and this many characters, "
        "each taking one inference slot, so single routes interleave with a big batch instead of waiting for all "
        "of it.",
    )
    admin_allow_paths: bool = Field(
        False,
        description="Let POST /admin/reload load any local path or file:// URI; else only models:/ registry URIs "
        "and the configured model URI (403 for others).",
    )
    model_cache_dir: Path | None = Field(
        None,
        description="Last good model copy, used when the registry is down (default: a folder per configured model "
        "under HOME/serving/last-good).",
    )
    batch_window_ms: float = Field(
        2.0,
        ge=0,
        le=100,
        description="Micro-batching: under load, how long a batch waits for more requests before it runs.",
    )
    max_batch_size: int = Field(64, ge=1, le=4096, description="Micro-batching: most prompts in one encoder call.")
    encoder_threads: int = Field(1, ge=1, description="Intra-op threads of the encoder and classifier per worker.")
    inference_threads: int | None = Field(
        None,
        ge=1,
        description="Micro-batches run concurrently per worker (threads calling the model); unset = CPU cores / "
        "workers, at most 8.",
    )
    freeze_heap: bool = Field(
        True,
        description="After a model (re)load, collect and gc.freeze() the heap so full garbage collections (100+ ms "
        "pauses with MLflow loaded) stop stalling requests.",
    )
    feedback_wait_ms: float = Field(
        1000.0, ge=0, description="How long feedback waits for its decision to reach the log (multi-worker lag)."
    )
    upstreams: Path | None = Field(
        None,
        description="Upstreams file (YAML): enables the OpenAI-compatible gateway (POST /v1/chat/completions) by "
        "mapping every catalog model to an OpenAI-compatible base URL and the NAME of the environment variable "
        "holding its key; unset = /v1/chat/completions answers 503.",
    )
    gateway_deadline_s: float = Field(
        120.0, gt=0, le=3600, description="Gateway: the longest one chat completion may take, every attempt included."
    )
    gateway_max_attempts: int = Field(
        6, ge=1, le=50, description="Gateway: most upstream calls per request (fallbacks and escalation included)."
    )
    cache: bool = Field(
        True,
        description="Gateway response cache: answers to deterministic requests (temperature 0, or a request that "
        "opts in) are kept in process (and in Redis with TIERWISE_CACHE_URL) and served again without an upstream "
        "call. Cached prompts and answers are user data.",
    )
    cache_url: str | None = Field(
        None, description="Redis URL (redis://host:6379/0) for the response cache shared by all replicas."
    )
    cache_ttl_s: float = Field(86400.0, gt=0, le=365 * 86400, description="How long a cached answer is served.")
    cache_l1_entries: int = Field(10_000, ge=0, le=10_000_000, description="In-process cache size (answers).")
    cache_semantic: bool = Field(
        False,
        description="Also serve a cached answer to a request whose routing embedding is this close to a cached "
        "one (same tenant, model, system prompt, earlier turns and parameters; prompts that fit the encoder's "
        "window only).",
    )
    cache_semantic_min_similarity: float = Field(
        0.97, ge=0.5, le=1.0, description="Semantic cache: the least cosine similarity that counts as the same."
    )
    client_keys: Path | None = Field(
        None,
        description="Client keys file (`tierwise keys add`): the gateway then answers only requests with a known "
        "`Authorization: Bearer` key (401 otherwise), each key's tenant with its budget and tier cap.",
    )
    budget_url: str | None = Field(
        None,
        description="Redis URL where tenants' budgets are counted across replicas (default: TIERWISE_CACHE_URL; "
        "neither: counted in each worker's memory).",
    )
    log_level: str = Field("info", description="uvicorn / tierwise log level.")
    keep_alive_s: int = Field(
        75,
        ge=1,
        le=3600,
        description="How long an idle HTTP keep-alive connection stays open (uvicorn's own default is 5 s). Longer "
        "than a load balancer's idle timeout (nginx upstream and cloud balancers: 60 s), so the balancer, not the "
        "replica, closes idle connections: a request it sends as the replica closes one would fail.",
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.lower()
        if v not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise ValueError("log_level must be one of critical, error, warning, info, debug, trace")
        return v

    @property
    def decision_log_target(self) -> str:
        """The decision log as configured: a path or a URL (``router.service.decision_log.store.resolve`` reads
        it); HOME/decisions.db by default."""
        return self.decision_log or str(self.home / "decisions.db")

    @property
    def last_good_root(self) -> Path:
        """Where the default per-model last-good folders live (``model_cache_dir`` replaces them when set)."""
        return (self.home / "serving" / "last-good").expanduser()

    @property
    def inference_threads_value(self) -> int:
        if self.inference_threads is not None:
            return self.inference_threads
        return max(1, min(8, (os.cpu_count() or 1) // self.workers))

    @property
    def admin_token_value(self) -> str | None:
        if self.admin_token is None:
            return None
        value = self.admin_token.get_secret_value()
        return value or None


# Rows of the README's settings table: (env var, default, meaning).
def settings_table() -> list[tuple[str, str, str]]:
    rows = [("TIERWISE_HOME", "~/.tierwise", "State directory (MLflow store, caches, decision log, last-good copy).")]
    rows.append(("TIERWISE_TRACKING_URI", "MLFLOW_TRACKING_URI or HOME/mlflow.db", "MLflow tracking URI."))
    for name, field in ServiceSettings.model_fields.items():
        if name in ("home", "tracking_uri", "cache_dir_override"):
            continue
        default = field.default
        shown = "unset" if default is None else str(default)
        rows.append((f"TIERWISE_{name.upper()}", shown, field.description or ""))
    return rows
