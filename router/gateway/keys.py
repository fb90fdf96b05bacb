"""Client API keys of the gateway: which tenant a request's ``Authorization: Bearer <key>`` belongs to.

The keys file is given by ``TIERWISE_CLIENT_KEYS`` (YAML)::

    tenants:
      acme: {budget_usd: 50, period: month, max_tier: medium}   # all optional; period: day | week | month (UTC)
      beta: {}
    keys:
      - {sha256: "<64 hex>", tenant: acme, name: acme-prod}     # name optional, for humans

The file holds SHA-256 hashes only, never a key: a field named ``key``, ``api_key``, ``token``, ``secret`` (or
``password``, ...), a value that looks like a tierwise key (``tw-...``) and a ``sha256`` that is not 64 hex digits
are refused, and no error message quotes a string from the file. :func:`add_key` creates a key, stores its hash and
returns the key, which is shown once and never stored.

A tenant's ``budget_usd`` (with its ``period``) is enforced by :class:`router.gateway.budgets.BudgetLedger`; a budget
of 0 refuses every request (a suspended tenant). ``max_tier`` caps the tiers the tenant's requests may reach
(:func:`cap_tier`); :meth:`KeyStore.check_tiers` checks the names against the served catalog.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from router.atomic_io import write_text_atomic
from router.config_files import read_config_file, validate_config, yaml_number
from router.numbers import Number

CLIENT_KEYS_ENV = "TIERWISE_CLIENT_KEYS"
"""Environment variable naming the client keys file; unset = the gateway takes no client keys (an open gateway)."""

KEY_PREFIX = "tw-"
MAX_BUDGET_USD = 1e9  # above any real budget: a larger one is a typo (and stays exact in the ledger's integers)
MAX_KEY_CHARS = 512  # a longer bearer token is not one of ours: refused before hashing

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = ("day", "week", "month")

# Field names that can only hold a plaintext secret (compared lower-case, "-" read as "_").
_SECRET_FIELDS = frozenset(
    {"key", "api_key", "apikey", "client_key", "token", "access_token", "bearer", "secret", "password", "plaintext"}
)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_GENERATED_KEY = re.compile(rf"{re.escape(KEY_PREFIX)}[A-Za-z0-9_-]{{40,}}")
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}")
_FILE_HEADER = (
    "# tierwise client keys: SHA-256 hashes of the keys only (add one with router.gateway.keys.add_key).\n"
    "# Format: tenants: {name: {budget_usd, period: day|week|month, max_tier}}; keys: [{sha256, tenant, name}]\n"
)


class KeysError(ValueError):
    """The client keys file is missing, unreadable or invalid (the message names the file and the field)."""


# --- the file ------------------------------------------------------------------------------------------------------
_Usd = Annotated[Number, BeforeValidator(yaml_number)]


def _check_tenant_name(v: str) -> str:
    if not _TENANT_NAME.fullmatch(v):
        raise ValueError(
            "a tenant name is 1-200 characters: letters, digits and . _ : @ + - (starting with a letter or digit)"
        )
    return v


_TenantName = Annotated[str, BeforeValidator(lambda v: v if not isinstance(v, str) else _check_tenant_name(v))]


class TenantEntry(BaseModel):
    """One entry of ``tenants:``."""

    model_config = ConfigDict(extra="forbid")

    budget_usd: _Usd | None = Field(None, ge=0, le=MAX_BUDGET_USD, description="Spend allowed per period (USD).")
    period: Period | None = Field(None, description="day, week or month (UTC calendar periods).")
    max_tier: str | None = Field(None, min_length=1, max_length=200, description="Highest tier (or model) allowed.")

    @model_validator(mode="after")
    def _budget_needs_period(self) -> TenantEntry:
        if self.budget_usd is not None and self.period is None:
            raise ValueError("period: field required with budget_usd (day, week or month)")
        if self.period is not None and self.budget_usd is None:
            raise ValueError("budget_usd: field required with period (a period without a budget limits nothing)")
        return self


class KeyEntry(BaseModel):
    """One entry of ``keys:``."""

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(description="SHA-256 (hex) of the key; see hash_key.")
    tenant: str = Field(min_length=1, description="A name under tenants:.")
    name: str | None = Field(None, min_length=1, max_length=200, description="For humans (which client holds it).")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.strip()
        if not _HEX64.fullmatch(v):  # never quoted: a pasted key is the likely mistake
            raise ValueError(
                "must be the SHA-256 of the key as 64 hex digits, not the key itself (hash_key(key) computes it)"
            )
        return v.lower()


class KeysFile(BaseModel):
    """The parsed keys file."""

    model_config = ConfigDict(extra="forbid")

    tenants: dict[_TenantName, TenantEntry] = Field(default_factory=dict)
    keys: list[KeyEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> KeysFile:
        seen: dict[str, int] = {}
        for i, k in enumerate(self.keys):
            if k.tenant not in self.tenants:
                known = ", ".join(self.tenants) or "none"
                raise ValueError(f"keys.{i}.tenant: unknown tenant {k.tenant!r}; tenants are {known}")
            if k.sha256 in seen:
                raise ValueError(f"keys.{i}.sha256: the same hash as keys.{seen[k.sha256]}.sha256 (one key, twice)")
            seen[k.sha256] = i
        return self


# --- keys ----------------------------------------------------------------------------------------------------------
def generate_key() -> str:
    """A new client key: ``tw-`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The SHA-256 (hex) stored for ``key``.

    A plain, unsalted SHA-256 is right here: the keys are 256 random bits (:func:`generate_key`), so nobody can
    search for a preimage; salts and slow hashes (bcrypt, argon2) protect low-entropy passwords, and would cost
    milliseconds on every request.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Tenant:
    """Who a client key belongs to, and its limits."""

    name: str
    budget_usd: float | None = None
    period: Period | None = None
    max_tier: str | None = None

    @property
    def has_budget(self) -> bool:
        return self.budget_usd is not None and self.period is not None


@dataclass(frozen=True, repr=False)
class ClientKey:
    """One key of the file: its hash, its tenant and its human name."""

    sha256: str
    tenant: Tenant
    name: str | None = None

    def __repr__(self) -> str:  # the hash is not secret, but it has no business in logs either
        return f"ClientKey(tenant={self.tenant.name!r}, name={self.name!r})"


class KeyStore:
    """The client keys of one keys file, looked up by hash."""

    def __init__(self, tenants: Mapping[str, Tenant], keys: Iterable[ClientKey], source: str = "<client keys>"):
        self.source = source
        self.tenants: Mapping[str, Tenant] = MappingProxyType(dict(tenants))
        self._by_hash: dict[str, ClientKey] = {k.sha256: k for k in keys}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyStore:
        """Read and validate a keys file; :class:`KeysError` names the file and the field."""
        return cls.from_file(_read(path), str(path))

    @classmethod
    def from_dict(cls, data: object, source: str = "<client keys>") -> KeyStore:
        return cls.from_file(validate_keys_file(data, source), source)

    @classmethod
    def from_file(cls, parsed: KeysFile, source: str = "<client keys>") -> KeyStore:
        tenants = {
            name: Tenant(name, None if e.budget_usd is None else float(e.budget_usd), e.period, e.max_tier)
            for name, e in parsed.tenants.items()
        }
        keys = [ClientKey(k.sha256, tenants[k.tenant], k.name) for k in parsed.keys]
        return cls(tenants, keys, source)

    def __len__(self) -> int:
        """The number of keys."""
        return len(self._by_hash)

    def lookup(self, authorization_header: str | None) -> ClientKey | None:
        """The key an ``Authorization`` header carries (``Bearer <key>``, scheme case-insensitive), or None."""
        token = bearer_token(authorization_header)
        if token is None:
            return None
        digest = hash_key(token)
        # A dict lookup by hash is safe: what its timing could leak is the stored hashes, and they are not secret
        # (256-bit random keys cannot be recovered from their SHA-256). compare_digest only keeps the final check
        # constant-time for readers who expect one.
        found = self._by_hash.get(digest)
        if found is None or not hmac.compare_digest(found.sha256, digest):
            return None
        return found

    def authenticate(self, authorization_header: str | None) -> Tenant | None:
        """The tenant of a valid ``Authorization: Bearer <key>``; None when the header is missing, uses another
        scheme or carries an unknown key (answer 401)."""
        found = self.lookup(authorization_header)
        return None if found is None else found.tenant

    def check_tiers(self, known: Iterable[str]) -> None:
        """Raise :class:`KeysError` when a tenant's ``max_tier`` is none of ``known`` (the catalog's tier and model
        names): a cap that names nothing would fail every request of that tenant."""
        names = list(known)
        bad = [t for t in self.tenants.values() if t.max_tier is not None and t.max_tier not in names]
        if bad:
            problems = "; ".join(f"tenants.{t.name}.max_tier: unknown tier {t.max_tier!r}" for t in bad)
            raise KeysError(f"{self.source}: {problems}; the catalog's tiers and models are {', '.join(names)}")


def bearer_token(authorization_header: str | None) -> str | None:
    """The credential of ``Bearer <credential>``, or None (no header, another scheme, empty or not a plausible
    key: longer than 512 characters, non-ASCII or with whitespace inside)."""
    if not authorization_header:
        return None
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token or len(token) > MAX_KEY_CHARS or not token.isascii() or any(c.isspace() for c in token):
        return None
    return token


def cap_tier(tenant: Tenant, requested: str | None, index: Callable[[str], int]) -> str | None:
    """The ``max_tier`` a request of ``tenant`` runs with: the lower of the request's and the tenant's cap.

    ``index`` gives a tier's position (the catalog's ``index``: tier or model name, cheapest first); it raises
    for an unknown name, which the caller answers like any unknown ``max_tier``.
    """
    if tenant.max_tier is None:
        return requested
    if requested is None:
        return tenant.max_tier
    return requested if index(requested) <= index(tenant.max_tier) else tenant.max_tier


# --- reading and writing -------------------------------------------------------------------------------------------
def validate_keys_file(data: object, source: str = "<client keys>") -> KeysFile:
    """Validate parsed file content; :class:`KeysError` names ``source`` and the field, quoting no string."""
    if not isinstance(data, dict):
        raise KeysError(f"{source}: a client keys file is a mapping with 'tenants' and 'keys'")
    plaintext = list(_plaintext_fields(data))
    if plaintext:
        raise KeysError(
            f"{source}: {', '.join(plaintext)}: a plaintext key is refused in the client keys file; store only its "
            "SHA-256 as sha256: (router.gateway.keys.hash_key, or add_key which writes it for you)"
        )
    return validate_config(KeysFile, data, source, KeysError)


def _read(path: str | os.PathLike[str]) -> KeysFile:
    data = read_config_file(
        path, KeysError, what="client keys file",
        empty="the file is empty; it needs 'tenants' and 'keys' (tenants: {} and keys: [] for a gateway that "
        "accepts no key)",
    )
    return validate_keys_file(data, str(path))


def add_key(
    path: str | os.PathLike[str],
    tenant: str,
    *,
    name: str | None = None,
    budget_usd: float | None = None,
    period: Period | None = None,
    max_tier: str | None = None,
) -> str:
    """Create a key for ``tenant``, store its hash in the keys file and return the key (shown once, never stored).

    The file is created when missing; an unknown tenant is added. ``budget_usd``, ``period`` and ``max_tier``
    set the tenant's values when given (others are kept). The new content is validated before anything is
    written and replaces the file atomically, keeping its permissions (a new file is private, 0600). The file is
    rewritten from its parsed content: comments in it are not kept. One writer at a time (two concurrent calls may
    lose one key).
    """
    p, source = Path(path), str(path)
    current = _read(p) if p.exists() else KeysFile()
    data = current.model_dump(mode="json", exclude_none=True)
    entry = data["tenants"].setdefault(tenant, {})
    for field, value in (("budget_usd", budget_usd), ("period", period), ("max_tier", max_tier)):
        if value is not None:
            entry[field] = value
    key = generate_key()
    row: dict[str, Any] = {"sha256": hash_key(key), "tenant": tenant}
    if name is not None:
        row["name"] = name
    data["keys"].append(row)
    checked = validate_keys_file(data, source)
    text = _FILE_HEADER + yaml.safe_dump(
        checked.model_dump(mode="json", exclude_none=True), sort_keys=False, default_flow_style=False
    )
    mode = stat.S_IMODE(p.stat().st_mode) if p.exists() else 0o600
    write_text_atomic(p, text, mode=mode)
    return key


def _plaintext_fields(data: object, path: str = "") -> Iterator[str]:
    """Dotted paths of fields named like a secret, and of values that look like a tierwise key. Tenant names are
    names, not fields: a tenant may be called ``token``."""
    if isinstance(data, dict):
        for k, v in data.items():
            name = str(k)
            here = f"{path}.{name}" if path else name
            if path != "tenants" and name.lower().replace("-", "_") in _SECRET_FIELDS:
                yield here
            elif _GENERATED_KEY.search(name):  # a key pasted as a tenant's name (never quoted)
                yield f"{path}.<a name that is a key>" if path else "<a name that is a key>"
            else:
                yield from _plaintext_fields(v, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _plaintext_fields(v, f"{path}.{i}")
    elif isinstance(data, str) and _GENERATED_KEY.search(data):
        yield path
