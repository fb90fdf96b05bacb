"""Draft a tier catalog from a log, for the user to review and complete (prices are left empty).

Rules:

* one tier per model in the (canonical long) log;
* tiers ordered by mean observed ``cost_usd`` per attempt, cheapest first (ties: model name); models without any
  logged cost go last, in alphabetical order, with a note asking the user to check the order;
* tier names are slugs of the model names: the part after the last ``/``, lowercased, runs of characters
  other than ``a-z 0-9 . _ -`` replaced by ``-`` (``mistralai/Mixtral-8x7B`` -> ``mixtral-8x7b``). When two models
  give the same slug, the full model name is slugified instead, and a numeric suffix is added if still needed;
* ``provider`` is the part before the first ``/`` when there is one, else ``"unknown"``;
* prices are ``None`` (to fill in): per-attempt costs cannot be split unambiguously into input and output prices;
* ``typical_output_tokens`` is the median logged ``output_tokens`` of the model when the log has them;
* acceptability threshold 1.0 when every score is 0 or 1 (pass/fail data), else 0.7 (graded scores; for pass/fail
  rows mixed into graded data, 0.7 and 1.0 select the same attempts);
* ``planning.min_plan_tier`` = the top (most expensive) tier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import yaml

from router.catalog import Acceptability, Catalog, Planning, Tier

__all__ = [
    "GRADED_THRESHOLD",
    "Draft",
    "catalog_to_commented_yaml",
    "draft",
    "draft_catalog",
    "draft_catalog_with_notes",
    "slugify_model",
]

GRADED_THRESHOLD = 0.7
"""Acceptability threshold drafted for logs with graded (non 0/1) scores."""


def slugify_model(model: str, full: bool = False) -> str:
    """Tier-name slug of a model name: ``"mistralai/Mixtral-8x7B"`` -> ``"mixtral-8x7b"`` (``full``: whole name)."""
    text = model if full else model.rsplit("/", 1)[-1]
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return slug or "model"


def _unique_slugs(models: list[str]) -> dict[str, str]:
    short = {m: slugify_model(m) for m in models}
    counts = pd.Series(list(short.values())).value_counts()
    names: dict[str, str] = {}
    taken: set[str] = set()
    for m in models:
        base = short[m] if counts[short[m]] == 1 else slugify_model(m, full=True)
        name, k = base, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        names[m] = name
        taken.add(name)
    return names


@dataclass
class Draft:
    """A drafted catalog, one review note per tier name, and the tiers the log gave no cost for."""

    catalog: Catalog
    notes: dict[str, str] = field(default_factory=dict)
    uncosted: list[str] = field(default_factory=list)

    def header(self, source: str) -> str:
        """The comment written at the top of the drafted YAML: what the draft could not know."""
        lines = [f"Drafted by `tierwise catalog init` from {source}. Review before training:"]
        lines.append("- tiers must be listed cheapest first (routing escalates down this list);")
        if len(self.uncosted) == len(self.catalog.tiers):
            lines.append("- the log has no costs, so the order below is ALPHABETICAL, a guess: reorder the tiers;")
        elif self.uncosted:
            lines.append(
                f"- the log has no costs for {', '.join(self.uncosted)}: they are placed last alphabetically, a guess;"
            )
        else:
            lines.append("- the order below follows the mean logged cost per attempt;")
        lines.append("- input_usd_per_1m / output_usd_per_1m are empty: fill them in (a log without costs needs them);")
        lines.append("- then run `tierwise catalog check` on this file.")
        return "\n".join(lines)


def draft_catalog_with_notes(df: pd.DataFrame, name: str = "drafted") -> tuple[Catalog, dict[str, str]]:
    """Draft catalog (see the module docstring) plus one review note per tier name."""
    d = draft(df, name)
    return d.catalog, d.notes


def draft(df: pd.DataFrame, name: str = "drafted") -> Draft:
    """Draft catalog (see the module docstring), its review notes and the tiers placed without a cost.

    Args:
        df: canonical long log (``model``, ``score``; optional ``cost_usd``, ``output_tokens``). Not modified.
        name: catalog name.
    """
    if "model" not in df.columns or "score" not in df.columns:
        raise ValueError("draft_catalog needs a canonical long log with 'model' and 'score' columns")
    if len(df) == 0:
        raise ValueError("draft_catalog needs a non-empty log")
    models = df["model"].astype(str)
    if "cost_usd" in df.columns:
        mean_cost = pd.to_numeric(df["cost_usd"], errors="coerce").groupby(models).mean()
    else:
        mean_cost = pd.Series(np.nan, index=pd.Index(sorted(models.unique())))
    counts = models.value_counts()
    costed = sorted((m for m in mean_cost.index if np.isfinite(mean_cost[m])), key=lambda m: (mean_cost[m], m))
    uncosted = sorted(m for m in models.unique() if m not in set(costed))
    order = costed + uncosted
    slugs = _unique_slugs(order)

    typical: dict[str, int] = {}
    if "output_tokens" in df.columns:
        med = pd.to_numeric(df["output_tokens"], errors="coerce").groupby(models).median()
        typical = {m: int(round(v)) for m, v in med.items() if np.isfinite(v)}

    tiers = [
        Tier(
            name=slugs[m],
            model=m,
            provider=m.split("/", 1)[0] if "/" in m else "unknown",
            typical_output_tokens=typical.get(m),
        )
        for m in order
    ]
    scores = pd.to_numeric(df["score"], errors="coerce").dropna()
    binary = bool(scores.isin([0.0, 1.0]).all())
    catalog = Catalog(
        name=name,
        tiers=tiers,
        acceptability=Acceptability(threshold=1.0 if binary else GRADED_THRESHOLD),
        planning=Planning(min_plan_tier=tiers[-1].name),
    )

    notes: dict[str, str] = {}
    for m in order:
        n = int(counts[m])
        if m in costed:
            notes[slugs[m]] = (
                f"mean logged cost {mean_cost[m]:.3g} USD per attempt over {n} attempts; "
                "TODO: fill input_usd_per_1m / output_usd_per_1m"
            )
        else:
            notes[slugs[m]] = (
                f"no logged cost ({n} attempts): placed after the costed tiers in alphabetical order; "
                "TODO: fill prices and move this tier to its place in the cheapest-first order"
            )
    return Draft(catalog, notes, [slugs[m] for m in uncosted])


def draft_catalog(df: pd.DataFrame, name: str = "drafted") -> Catalog:
    """One tier per model of the log, cheapest first, prices left empty (see the module docstring)."""
    return draft_catalog_with_notes(df, name)[0]


def catalog_to_commented_yaml(catalog: Catalog, notes: dict[str, str] | None = None, header: str | None = None) -> str:
    """The catalog as YAML with a ``# note`` comment above each tier that has one (and an optional header).

    The result parses back to the same catalog (comments are ignored by YAML).
    """
    notes = notes or {}
    text = catalog.to_yaml()
    lines_out: list[str] = []
    if header:
        lines_out += [f"# {line}".rstrip() for line in header.splitlines()]
    for line in text.splitlines():
        m = re.match(r"^(\s*)- name: (.+)$", line)
        if m:
            tier_name = yaml.safe_load(m.group(2))
            note = notes.get(str(tier_name))
            if note:
                lines_out.append(f"{m.group(1)}# {note}")
        lines_out.append(line)
    return "\n".join(lines_out) + "\n"
