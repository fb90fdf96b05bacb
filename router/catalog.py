"""The tier catalog: which model serves each tier, what it costs, and what counts as acceptable.

A catalog is a YAML file (default ``models/catalog.yaml``)::

    name: demo
    tiers:                      # ordered: cheapest / least capable first
      - name: nano
        model: demo-nano-1
        provider: demo
        input_usd_per_1m: 0.10
        output_usd_per_1m: 0.40
        batch_discount: 0.5     # optional: batch API price = (1 - discount) * price
      - ...
    acceptability:
      threshold: 1.0            # an attempt is acceptable when score >= threshold
      per_task: {summarize: 0.7}
    planning:
      min_plan_tier: large      # lowest tier allowed to plan in plan-and-execute agents
      min_verify_tier: medium

The catalog is plain data (pydantic models); reading and writing YAML are the only I/O here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CATALOG_PATH = Path(__file__).resolve().parent.parent / "models" / "catalog.yaml"


class CatalogError(ValueError):
    """A catalog file is missing, unreadable or inconsistent."""


class Tier(BaseModel):
    """One routing tier and the model that serves it."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, description="Tier name used in routing decisions, e.g. 'small'.")]
    model: Annotated[str, Field(min_length=1, description="Model identifier as it appears in the logs.")]
    provider: str = Field("unknown", description="Who serves the model (free text).")
    input_usd_per_1m: float | None = Field(None, ge=0, description="USD per 1M input tokens; None = unknown.")
    output_usd_per_1m: float | None = Field(None, ge=0, description="USD per 1M output tokens; None = unknown.")
    batch_discount: float = Field(0.0, ge=0, lt=1, description="Fractional discount of the provider's batch API.")
    typical_output_tokens: int | None = Field(
        None, ge=0, description="Output tokens assumed for cost estimates when a request gives none."
    )

    @property
    def has_prices(self) -> bool:
        return self.input_usd_per_1m is not None and self.output_usd_per_1m is not None

    def price_usd(self, input_tokens: float, output_tokens: float, batch: bool = False) -> float:
        """USD for one call with the given token counts (list price, or batch price when ``batch``)."""
        if not self.has_prices:
            raise CatalogError(f"tier {self.name!r} (model {self.model!r}) has no prices in the catalog")
        usd = (input_tokens * self.input_usd_per_1m + output_tokens * self.output_usd_per_1m) / 1e6
        return usd * (1.0 - self.batch_discount) if batch else usd


class Acceptability(BaseModel):
    """When an attempt counts as acceptable: ``score >= threshold`` (per-task overrides allowed)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(1.0, ge=0, le=1, description="Score an answer needs to be acceptable (1.0 = pass/fail).")
    per_task: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)

    def threshold_for(self, task: str | None) -> float:
        if task is not None and task in self.per_task:
            return self.per_task[task]
        return self.threshold


class Planning(BaseModel):
    """Plan-and-execute policy: which tiers may plan and verify."""

    model_config = ConfigDict(extra="forbid")

    min_plan_tier: str | None = Field(None, description="Lowest tier allowed for role=plan (default: the top tier).")
    min_verify_tier: str | None = Field(None, description="Lowest tier allowed for role=verify (default: no floor).")


class Catalog(BaseModel):
    """An ordered list of tiers (cheapest first) with the acceptability rule and the planning policy."""

    model_config = ConfigDict(extra="forbid")

    name: str = "catalog"
    tiers: list[Tier] = Field(min_length=1)
    acceptability: Acceptability = Field(default_factory=Acceptability)
    planning: Planning = Field(default_factory=Planning)

    @model_validator(mode="after")
    def _check_names(self) -> Catalog:
        names = [t.name for t in self.tiers]
        models = [t.model for t in self.tiers]
        for label, values in (("tier name", names), ("model", models)):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"duplicate {label}(s) in catalog: {', '.join(dupes)}")
        for field in ("min_plan_tier", "min_verify_tier"):
            value = getattr(self.planning, field)
            if value is not None and value not in names:
                raise ValueError(f"planning.{field} names unknown tier {value!r}; tiers are {names}")
        return self

    @field_validator("tiers")
    @classmethod
    def _non_empty(cls, tiers: list[Tier]) -> list[Tier]:
        if not tiers:
            raise ValueError("a catalog needs at least one tier")
        return tiers

    # --- lookups -------------------------------------------------------------------------------------------
    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]

    @property
    def models(self) -> list[str]:
        return [t.model for t in self.tiers]

    def index(self, tier_or_model: str) -> int:
        """Position of a tier, looked up by tier name or by model name."""
        for i, t in enumerate(self.tiers):
            if tier_or_model in (t.name, t.model):
                return i
        raise KeyError(f"unknown tier {tier_or_model!r}; known tiers: {', '.join(self.tier_names)}")

    def tier(self, tier_or_model: str) -> Tier:
        return self.tiers[self.index(tier_or_model)]

    @property
    def plan_floor(self) -> int:
        """Index of the lowest tier allowed to plan (the top tier when the catalog does not say)."""
        p = self.planning.min_plan_tier
        return self.index(p) if p is not None else len(self.tiers) - 1

    @property
    def verify_floor(self) -> int:
        p = self.planning.min_verify_tier
        return self.index(p) if p is not None else 0

    # --- I/O -----------------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str] | None = None) -> Catalog:
        """Read and validate a catalog file (default: ``models/catalog.yaml``)."""
        p = Path(path) if path is not None else DEFAULT_CATALOG_PATH
        if not p.is_file():
            raise CatalogError(f"catalog file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise CatalogError(f"{p}: not valid YAML: {exc}") from exc
        return cls.from_dict(data, source=str(p))

    @classmethod
    def from_dict(cls, data: object, source: str = "<catalog>") -> Catalog:
        if not isinstance(data, dict):
            raise CatalogError(f"{source}: a catalog is a mapping with a 'tiers' list")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
            )
            raise CatalogError(f"{source}: invalid catalog: {problems}") from exc

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the catalog atomically (temp file + rename)."""
        return write_text_atomic(Path(path), self.to_yaml())


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder and an atomic rename."""
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
