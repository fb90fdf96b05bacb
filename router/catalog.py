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

Every number must be a finite, non-negative number (``.inf``, ``.nan`` and ``true`` / ``false`` are refused, and
prices above :data:`MAX_USD_PER_1M` or token counts above :data:`MAX_TOKENS` are refused as typos): a catalog price
prices every unlogged attempt the router is trained on, so one bad value poisons the whole model.

A log written by ``tierwise decisions export`` carries the catalog it was routed with beside it
(:func:`catalog_sidecar_path`: ``feedback.csv`` -> ``feedback.catalog.yaml``); ``tierwise train`` uses it when no
``--catalog`` is given.

The catalog is plain data (pydantic models); reading and writing YAML are the only I/O here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from router import pricing
from router.atomic_io import write_text_atomic
from router.config_files import yaml_number
from router.limits import MAX_TOKENS  # one bound on token counts for feedback, logs and catalogs
from router.numbers import Integer, Number, number_message

DEFAULT_CATALOG_PATH = Path(__file__).resolve().parent.parent / "models" / "catalog.yaml"
CATALOG_SIDECAR_SUFFIX = ".catalog.yaml"
MAX_USD_PER_1M = 100_000.0
"""Highest plausible list price per 1M tokens (0.10 USD a token); higher is a typo (e.g. a price per token)."""


# A price, a discount or a threshold in a catalog: a finite number (YAML's quirks tolerated)
_Number = Annotated[Number, BeforeValidator(yaml_number)]


def catalog_sidecar_path(data_path: str | os.PathLike[str]) -> Path:
    """The catalog file that travels with a log: ``feedback.csv`` -> ``feedback.catalog.yaml``.

    The log's extension (and a ``.gz`` after it) is replaced: ``feedback.csv.gz`` -> ``feedback.catalog.yaml``.
    """
    p = Path(data_path)
    name = p.name[:-3] if p.name.lower().endswith(".gz") else p.name
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return p.with_name(stem + CATALOG_SIDECAR_SUFFIX)


class CatalogError(ValueError):
    """A catalog file is missing, unreadable or inconsistent."""


class Tier(BaseModel):
    """One routing tier and the model that serves it."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, description="Tier name used in routing decisions, e.g. 'small'.")]
    model: Annotated[str, Field(min_length=1, description="Model identifier as it appears in the logs.")]
    provider: str = Field("unknown", description="Who serves the model (free text).")
    input_usd_per_1m: _Number | None = Field(
        None, ge=0, le=MAX_USD_PER_1M, description="USD per 1M input tokens; None = unknown."
    )
    output_usd_per_1m: _Number | None = Field(
        None, ge=0, le=MAX_USD_PER_1M, description="USD per 1M output tokens; None = unknown."
    )
    batch_discount: _Number = Field(0.0, ge=0, lt=1, description="Fractional discount of the provider's batch API.")
    typical_output_tokens: Annotated[Integer | None, BeforeValidator(yaml_number)] = Field(
        None, ge=0, le=MAX_TOKENS, description="Output tokens assumed for cost estimates when a request gives none."
    )

    @property
    def has_prices(self) -> bool:
        return self.input_usd_per_1m is not None and self.output_usd_per_1m is not None

    def price_usd(self, input_tokens: float, output_tokens: float, batch: bool = False) -> float:
        """USD for one call with the given token counts (list price, or batch price when ``batch``; the formula is
        :func:`router.pricing.usd`). Raises CatalogError when the tier has no prices."""
        if self.input_usd_per_1m is None or self.output_usd_per_1m is None:
            raise CatalogError(f"tier {self.name!r} (model {self.model!r}) has no prices in the catalog")
        return pricing.usd(
            input_tokens,
            output_tokens,
            self.input_usd_per_1m,
            self.output_usd_per_1m,
            batch_discount=self.batch_discount,
            batch=batch,
        )


class Acceptability(BaseModel):
    """When an attempt counts as acceptable: ``score >= threshold`` (per-task overrides allowed)."""

    model_config = ConfigDict(extra="forbid")

    threshold: _Number = Field(
        1.0, ge=0, le=1, description="Score an answer needs to be acceptable (1.0 = pass/fail)."
    )
    per_task: dict[str, Annotated[_Number, Field(ge=0, le=1)]] = Field(default_factory=dict)

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

    def review(self) -> tuple[list[str], list[str]]:
        """``(errors, warnings)`` of a valid catalog that still cannot route well (``tierwise catalog check``).

        Errors: a tier listed after another one whose prices are both at least as high and one higher (the order is
        cheapest first: routing escalates up the list, so an inverted pair escalates to a cheaper model). Warnings:
        tiers without prices (training then needs the log's ``cost_usd`` for them) and pairs whose prices cross
        (one cheaper per input token, the other per output token) where a typical call costs less on the later tier.
        Loading never fails on these: bundles written with such a catalog keep loading."""
        errors: list[str] = []
        warnings: list[str] = []
        for t in self.tiers:
            if not t.has_prices:
                missing = [f for f in ("input_usd_per_1m", "output_usd_per_1m") if getattr(t, f) is None]
                warnings.append(
                    f"tier {t.name!r} (model {t.model!r}) has no {' / '.join(missing)}: training needs the log's "
                    "cost_usd for it and its place in the cheapest-first order cannot be checked"
                )
        priced = [t for t in self.tiers if t.has_prices]
        for i, low in enumerate(priced):
            for high in priced[i + 1 :]:
                a = (low.input_usd_per_1m or 0.0, low.output_usd_per_1m or 0.0)
                b = (high.input_usd_per_1m or 0.0, high.output_usd_per_1m or 0.0)
                if b[0] <= a[0] and b[1] <= a[1] and b != a:
                    errors.append(
                        f"tier {high.name!r} ({b[0]:g} / {b[1]:g} USD per 1M input / output tokens) is cheaper "
                        f"than tier {low.name!r} ({a[0]:g} / {a[1]:g}) listed before it; tiers go cheapest first"
                    )
                elif b[0] < a[0] or b[1] < a[1]:
                    tokens = pricing.DEFAULT_OUTPUT_TOKENS
                    if high.price_usd(1000, tokens) < low.price_usd(1000, tokens):
                        warnings.append(
                            f"tier {high.name!r} costs less than tier {low.name!r} listed before it for a call of "
                            f"1000 input and {tokens} output tokens; check the cheapest-first order"
                        )
        return errors, warnings

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
            problems = "; ".join(_describe_error(data, e) for e in exc.errors())
            raise CatalogError(f"{source}: invalid catalog: {problems}") from exc

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the catalog atomically (temp file + rename)."""
        return write_text_atomic(Path(path), self.to_yaml())


def _describe_error(data: dict[Any, Any], error: Any) -> str:
    """The field's dotted path with the tier's name and the offending value, e.g.
    ``tiers.1.input_usd_per_1m (tier 'large'): Input should be a finite number (got inf)``."""
    loc = [str(x) for x in error["loc"]]
    where = ".".join(loc) or "<root>"
    tiers = data.get("tiers")
    if len(loc) >= 2 and loc[0] == "tiers" and loc[1].isdigit() and isinstance(tiers, list):
        i = int(loc[1])
        name = tiers[i].get("name") if i < len(tiers) and isinstance(tiers[i], dict) else None
        if name is not None:
            where += f" (tier {str(name)!r})"
    got = error.get("input")
    shown = f" (got {got!r})" if isinstance(got, (bool, int, float)) else ""
    if isinstance(got, str):
        shown = f" (got {got[:40]!r})"  # e.g. a quoted price: the strict number types refuse text
    return f"{where}: {number_message(error) or error['msg']}{shown}"
