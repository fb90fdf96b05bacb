"""The upstreams file: where the gateway calls each catalog model (deployment configuration, not part of the model).

Given by ``--upstreams`` or ``TIERWISE_UPSTREAMS``; YAML, or JSON when the name ends in ``.json``::

    defaults:                    # optional, applied to every upstream that does not set its own
      timeout_s: 60              # longest one attempt may take (a stream: longest wait for the next event)
      connect_timeout_s: 5
      max_concurrency: 64        # calls in flight to one upstream; more wait for a slot
    upstreams:
      demo-nano:                 # a catalog model name (Tier.model), or an alias used in fallbacks
        base_url: http://127.0.0.1:8001/v1
        api_key_env: NANO_KEY    # NAME of the environment variable holding the key (none: no key is sent)
        api_key_header: api-key  # optional: send the key raw in this header (Azure) instead of Authorization: Bearer
        model: gpt-4.1-nano      # model name upstream (default: the entry's name)
        headers: {x-team: search}          # optional extra headers; values are not secrets
        params: {api-version: 2024-06-01}  # optional query parameters (Azure's api-version)
        timeout_s: 30
        max_concurrency: 16
        fallbacks: [demo-nano-backup]      # tried in order (depth first) when this upstream fails
      demo-nano-backup:
        base_url: https://backup.example/v1
    circuit_breaker: {failures: 5, cooldown_s: 30}   # optional

Keys never live in this file: a field named ``api_key``, ``key``, ``token`` (or ``password`` / ``secret``), a
credential header (``Authorization``, ``api-key``, ...) and a ``base_url`` with ``user:password@`` are refused, so
the file can be committed and shared. The key is read from the environment when an upstream is first resolved
(:meth:`UpstreamsConfig.upstream`); :meth:`UpstreamsConfig.check_keys` reports unset variables at start-up, naming
the variable and never printing a value.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from router.config_files import read_config_file, validate_config, yaml_number
from router.numbers import Integer, Number

UPSTREAMS_ENV = "TIERWISE_UPSTREAMS"
"""Environment variable naming the upstreams file (``--upstreams`` overrides it)."""

MAX_TIMEOUT_S = 3600.0
MAX_CONNECT_TIMEOUT_S = 300.0
MAX_CONCURRENCY = 10_000
MAX_BREAKER_FAILURES = 1000
MAX_COOLDOWN_S = 3600.0

# Field names that can only hold a literal secret (compared lower-case, "-" read as "_").
_SECRET_FIELDS = frozenset({"api_key", "apikey", "key", "token", "access_token", "password", "secret"})
# Headers that carry credentials: a value for them in the file would be a literal key.
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "x-goog-api-key", "cookie"}
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


class UpstreamsError(ValueError):
    """The upstreams file is missing, unreadable or inconsistent, or a key it names is not set."""


_Seconds = Annotated[Number, BeforeValidator(yaml_number)]
_Count = Annotated[Integer, BeforeValidator(yaml_number)]
_Name = Annotated[str, Field(min_length=1)]


def _date_as_text(value: Any) -> Any:
    """YAML reads an unquoted ``2024-06-01`` (Azure's api-version) as a date: it was meant as that text."""
    return value.isoformat() if isinstance(value, _dt.date) else value


_Text = Annotated[str, BeforeValidator(_date_as_text)]


class UpstreamDefaults(BaseModel):
    """Values every upstream gets unless it sets its own."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: _Seconds = Field(60.0, gt=0, le=MAX_TIMEOUT_S, description="Longest one attempt may take.")
    connect_timeout_s: _Seconds = Field(5.0, gt=0, le=MAX_CONNECT_TIMEOUT_S, description="Longest a connect takes.")
    max_concurrency: _Count = Field(64, ge=1, le=MAX_CONCURRENCY, description="Calls in flight to one upstream.")


class CircuitBreakerSettings(BaseModel):
    """After ``failures`` consecutive retryable failures an upstream is skipped for ``cooldown_s``."""

    model_config = ConfigDict(extra="forbid")

    failures: _Count = Field(5, ge=1, le=MAX_BREAKER_FAILURES)
    cooldown_s: _Seconds = Field(30.0, gt=0, le=MAX_COOLDOWN_S)


class UpstreamEntry(BaseModel):
    """One entry of ``upstreams:`` as written in the file (see :class:`Upstream` for the resolved form)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="OpenAI-compatible API root, e.g. https://api.openai.com/v1.")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the key.")
    api_key_header: str | None = Field(
        None, description="Header carrying the raw key (e.g. api-key); default Authorization: Bearer <key>."
    )
    model: _Name | None = Field(None, description="Model name upstream (default: the entry's name).")
    headers: dict[str, _Text] = Field(default_factory=dict, description="Extra headers (not secrets).")
    params: dict[str, _Text] = Field(default_factory=dict, description="Extra query parameters (not secrets).")
    timeout_s: _Seconds | None = Field(None, gt=0, le=MAX_TIMEOUT_S)
    connect_timeout_s: _Seconds | None = Field(None, gt=0, le=MAX_CONNECT_TIMEOUT_S)
    max_concurrency: _Count | None = Field(None, ge=1, le=MAX_CONCURRENCY)
    fallbacks: list[_Name] = Field(default_factory=list, description="Entries tried, in order, when this one fails.")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        # messages never quote the URL: it may carry a password
        v = v.strip()
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc})") from None
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if "@" in parts.netloc:
            raise ValueError(
                "must not carry credentials (user:password@); put the key in an environment variable and name it "
                "with api_key_env"
            )
        if not parts.hostname:
            raise ValueError("has no host")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment; give query parameters under params:")
        return v.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.fullmatch(v):
            # never quote it: a pasted key is the likely mistake
            raise ValueError(
                "must be the NAME of an environment variable (letters, digits and _, not starting with a digit), "
                "not the key itself"
            )
        return v

    @field_validator("api_key_header")
    @classmethod
    def _key_header(cls, v: str | None) -> str | None:
        if v is not None and not _HEADER_NAME.fullmatch(v):
            raise ValueError("must be a header name (letters, digits and -)")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _CREDENTIAL_HEADERS:
                raise ValueError(
                    f"header {name!r} carries a credential and is refused here; put the key in an environment "
                    "variable, name it with api_key_env (and api_key_header for a header other than Authorization)"
                )
            if not value.isprintable() or not value.isascii():
                raise ValueError(f"header {name!r}: the value must be printable ASCII on one line")
        return v

    @field_validator("fallbacks")
    @classmethod
    def _no_repeats(cls, v: list[str]) -> list[str]:
        repeated = sorted({f for f in v if v.count(f) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return v


@dataclass(frozen=True, eq=False, repr=False)
class Upstream:
    """A resolved upstream: everything needed to call it, the key included (in ``headers``; never in ``repr``)."""

    name: str
    base_url: str  # without a trailing slash
    model: str  # the model name sent upstream
    headers: Mapping[str, str]  # extra headers, and the key's header when api_key_env is set
    params: Mapping[str, str]
    timeout_s: float
    connect_timeout_s: float
    max_concurrency: int
    api_key_env: str | None = None
    _secret_header: str | None = field(default=None)

    @property
    def url(self) -> str:
        """The chat completions endpoint."""
        return f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:
        shown = {k: ("***" if k == self._secret_header else v) for k, v in self.headers.items()}
        return (
            f"Upstream(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, headers={shown!r}, timeout_s={self.timeout_s:g}, "
            f"connect_timeout_s={self.connect_timeout_s:g}, max_concurrency={self.max_concurrency})"
        )

    __str__ = __repr__


class UpstreamsConfig(BaseModel):
    """The parsed upstreams file; :meth:`upstream` and :meth:`chain` resolve entries (keys read from the env)."""

    model_config = ConfigDict(extra="forbid")

    defaults: UpstreamDefaults = Field(default_factory=UpstreamDefaults)
    upstreams: dict[_Name, UpstreamEntry] = Field(min_length=1)
    circuit_breaker: CircuitBreakerSettings = Field(default_factory=CircuitBreakerSettings)

    _source: str = PrivateAttr("<upstreams>")
    _environ: Mapping[str, str] | None = PrivateAttr(None)
    _resolved: dict[str, Upstream] = PrivateAttr(default_factory=dict)
    _chains: dict[str, list[Upstream]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_fallbacks(self) -> UpstreamsConfig:
        for name, entry in self.upstreams.items():
            for f in entry.fallbacks:
                if f == name:
                    raise ValueError(f"upstreams.{name}.fallbacks: an upstream cannot be its own fallback")
                if f not in self.upstreams:
                    raise ValueError(
                        f"upstreams.{name}.fallbacks: unknown upstream {f!r}; entries are {', '.join(self.upstreams)}"
                    )
        cycle = _find_cycle({n: e.fallbacks for n, e in self.upstreams.items()})
        if cycle:
            raise ValueError(f"fallbacks form a cycle: {' -> '.join(cycle)}")
        return self

    # --- reading -------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(
        cls, data: object, source: str = "<upstreams>", environ: Mapping[str, str] | None = None
    ) -> UpstreamsConfig:
        """Validate parsed file content; errors name ``source`` and the field. ``environ`` (default
        ``os.environ``) is where keys are read from."""
        if not isinstance(data, dict):
            raise UpstreamsError(f"{source}: an upstreams file is a mapping with an 'upstreams' mapping")
        secrets = list(_literal_secret_fields(data))
        if secrets:
            raise UpstreamsError(
                f"{source}: {', '.join(secrets)}: a literal key is refused in the upstreams file; put the key in an "
                "environment variable and name that variable with api_key_env"
            )
        config = validate_config(cls, data, source, UpstreamsError)
        config._source = source
        config._environ = environ
        return config

    @property
    def source(self) -> str:
        """Where the configuration was read from (the file name in messages)."""
        return self._source

    def _env(self, environ: Mapping[str, str] | None = None) -> Mapping[str, str]:
        if environ is not None:
            return environ
        return self._environ if self._environ is not None else os.environ

    # --- checks --------------------------------------------------------------------------------------------
    def validate_catalog(self, models: list[str]) -> list[str]:
        """Raise :class:`UpstreamsError` when a catalog model has no entry (every tier must be reachable); return
        warnings for entries no catalog model can reach (neither a catalog model nor in the fallbacks of one)."""
        missing = [m for m in models if m not in self.upstreams]
        if missing:
            raise UpstreamsError(
                f"{self._source}: no upstream for catalog model(s) {', '.join(missing)}; every tier must be "
                "reachable: add an entry named after each model under upstreams:"
            )
        used = {u for m in models for u in self._chain_names(m)}
        return [
            f"{self._source}: upstreams.{name} is unused: neither a catalog model nor a fallback of one"
            for name in self.upstreams
            if name not in used
        ]

    def check_keys(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Problems with the keys the file names: an ``api_key_env`` variable unset, empty or not a valid header
        value. Names the variable, never prints its value."""
        env = self._env(environ)
        problems: list[str] = []
        for name, entry in self.upstreams.items():
            var = entry.api_key_env
            if var is None:
                continue
            problem = _key_problem(env.get(var))
            if problem:
                problems.append(f"{self._source}: upstreams.{name}.api_key_env: environment variable {var} {problem}")
        return problems

    # --- resolution ----------------------------------------------------------------------------------------
    @property
    def total_concurrency(self) -> int:
        """Sum of every upstream's concurrency cap (sizes the connection pool)."""
        return sum(
            e.max_concurrency if e.max_concurrency is not None else self.defaults.max_concurrency
            for e in self.upstreams.values()
        )

    def upstream(self, name: str) -> Upstream:
        """The resolved entry ``name``, its key read from the environment (once; cached)."""
        cached = self._resolved.get(name)
        if cached is not None:
            return cached
        entry = self.upstreams.get(name)
        if entry is None:
            raise UpstreamsError(f"{self._source}: no upstream named {name!r}")
        headers = dict(entry.headers)
        secret_header = None
        if entry.api_key_env is not None:
            raw = self._env().get(entry.api_key_env)
            problem = _key_problem(raw)
            if problem or raw is None:
                raise UpstreamsError(
                    f"{self._source}: upstreams.{name}.api_key_env: environment variable {entry.api_key_env} "
                    f"{problem or 'is not set'}"
                )
            key = raw.strip()
            if entry.api_key_header is None or entry.api_key_header.lower() == "authorization":
                secret_header, headers[secret_header] = "Authorization", f"Bearer {key}"
            else:
                secret_header, headers[secret_header] = entry.api_key_header, key
        d = self.defaults
        resolved = Upstream(
            name=name,
            base_url=entry.base_url,
            model=entry.model or name,
            headers=MappingProxyType(headers),
            params=MappingProxyType(dict(entry.params)),
            timeout_s=entry.timeout_s if entry.timeout_s is not None else d.timeout_s,
            connect_timeout_s=entry.connect_timeout_s if entry.connect_timeout_s is not None else d.connect_timeout_s,
            max_concurrency=entry.max_concurrency if entry.max_concurrency is not None else d.max_concurrency,
            api_key_env=entry.api_key_env,
            _secret_header=secret_header,
        )
        self._resolved[name] = resolved
        return resolved

    def chain(self, model: str) -> list[Upstream]:
        """The entry ``model`` followed by its fallbacks, depth first, each upstream once."""
        cached = self._chains.get(model)
        if cached is None:
            if model not in self.upstreams:
                raise UpstreamsError(f"{self._source}: no upstream entry for model {model!r}")
            cached = self._chains[model] = [self.upstream(n) for n in self._chain_names(model)]
        return list(cached)

    def _chain_names(self, model: str) -> list[str]:
        order: list[str] = []

        def visit(name: str) -> None:
            if name in order:
                return
            order.append(name)
            for f in self.upstreams[name].fallbacks:
                visit(f)

        if model in self.upstreams:
            visit(model)
        return order


def load_upstreams(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> UpstreamsConfig:
    """Read and validate an upstreams file (YAML; JSON when the name ends in ``.json``).

    Errors are :class:`UpstreamsError` naming the file and the field, e.g.
    ``upstreams.yaml: upstreams.demo-nano.timeout_s: Input should be greater than 0 (got -1)``.
    """
    data = read_config_file(
        path, UpstreamsError, what="upstreams file", empty="the file is empty; it needs an 'upstreams' mapping"
    )
    return UpstreamsConfig.from_dict(data, source=str(path), environ=environ)


# --- helpers -----------------------------------------------------------------------------------------------------
def _key_problem(value: str | None) -> str | None:
    """Why ``value`` cannot be sent as a key (never quoting it), or None."""
    if value is None:
        return "is not set"
    key = value.strip()
    if not key:
        return "is empty"
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        return "holds whitespace, control or non-ASCII characters inside the key (not a valid header value)"
    return None


def _literal_secret_fields(data: object, path: str = "") -> Iterator[str]:
    """Dotted paths of every field whose name can only mean a literal secret. The names of upstream entries are
    names, not fields, so an entry may be called ``token``."""
    if isinstance(data, dict):
        for k, v in data.items():
            name = str(k)
            here = f"{path}.{name}" if path else name
            if path != "upstreams" and name.lower().replace("-", "_") in _SECRET_FIELDS:
                yield here
            yield from _literal_secret_fields(v, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _literal_secret_fields(v, f"{path}.{i}")


def _find_cycle(edges: Mapping[str, list[str]]) -> list[str] | None:
    """One cycle of the fallback graph as ``[a, b, ..., a]``, or None."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node) :] + [node]
        if node in done:
            return None
        stack.append(node)
        for nxt in edges.get(node, []):
            found = visit(nxt)
            if found:
                return found
        stack.pop()
        done.add(node)
        return None

    for start in edges:
        found = visit(start)
        if found:
            return found
    return None


