"""Tests for router.catalog (YAML round trip, validation) and training.catalog_draft."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from router.catalog import DEFAULT_CATALOG_PATH, Catalog, CatalogError, Tier
from training.catalog_draft import (
    catalog_to_commented_yaml,
    draft_catalog,
    draft_catalog_with_notes,
    slugify_model,
)
from training.demo import demo_catalog

CATALOG_YAML = """
name: test
tiers:
  - {name: small, model: m-small, input_usd_per_1m: 0.5, output_usd_per_1m: 1.5, batch_discount: 0.5}
  - {name: large, model: m-large, input_usd_per_1m: 10, output_usd_per_1m: 30}
acceptability: {threshold: 1.0, per_task: {summarize: 0.7}}
planning: {min_plan_tier: large}
"""


def test_yaml_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG_YAML)
    cat = Catalog.from_yaml(path)
    assert cat.tier_names == ["small", "large"] and cat.models == ["m-small", "m-large"]
    saved = cat.save(tmp_path / "out" / "c.yaml")
    assert Catalog.from_yaml(saved) == cat
    assert not list((tmp_path / "out").glob(".c.yaml.*"))  # no temp files left behind


def test_lookups_and_prices() -> None:
    cat = Catalog.from_dict(yaml.safe_load(CATALOG_YAML))
    assert cat.index("large") == 1 and cat.index("m-small") == 0
    assert cat.plan_floor == 1 and cat.verify_floor == 0
    assert cat.acceptability.threshold_for("summarize") == 0.7 and cat.acceptability.threshold_for("code") == 1.0
    small = cat.tier("small")
    assert small.price_usd(1_000_000, 1_000_000) == pytest.approx(2.0)
    assert small.price_usd(1_000_000, 1_000_000, batch=True) == pytest.approx(1.0)
    with pytest.raises(KeyError):
        cat.index("huge")
    with pytest.raises(CatalogError, match="no prices"):
        Tier(name="x", model="y").price_usd(1, 1)


def test_duplicate_names_rejected() -> None:
    data = yaml.safe_load(CATALOG_YAML)
    data["tiers"][1]["name"] = "small"
    with pytest.raises(CatalogError, match="duplicate tier name"):
        Catalog.from_dict(data)
    data = yaml.safe_load(CATALOG_YAML)
    data["tiers"][1]["model"] = "m-small"
    with pytest.raises(CatalogError, match="duplicate model"):
        Catalog.from_dict(data)


def test_unknown_planning_tier_rejected() -> None:
    data = yaml.safe_load(CATALOG_YAML)
    data["planning"]["min_plan_tier"] = "huge"
    with pytest.raises(CatalogError, match="min_plan_tier names unknown tier 'huge'"):
        Catalog.from_dict(data)


def test_bad_yaml_and_bad_content(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [unclosed\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        Catalog.from_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(CatalogError, match="mapping"):
        Catalog.from_yaml(listy)
    with pytest.raises(CatalogError, match="not found"):
        Catalog.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(CatalogError, match="tiers"):
        Catalog.from_dict({"tiers": []})
    with pytest.raises(CatalogError, match="input_usd_per_1m"):
        Catalog.from_dict({"tiers": [{"name": "a", "model": "b", "input_usd_per_1m": -1}]})
    with pytest.raises(CatalogError, match="colour"):
        Catalog.from_dict({"tiers": [{"name": "a", "model": "b", "colour": "red"}]})


def test_default_catalog_file_is_the_demo_catalog() -> None:
    text = DEFAULT_CATALOG_PATH.read_text()
    if "SYNTHETIC demo catalog" not in text.splitlines()[0]:
        pytest.skip("models/catalog.yaml was replaced by a user catalog")
    assert Catalog.from_yaml() == demo_catalog()


# ---- drafting ---------------------------------------------------------------------------------------------------
def test_slugify() -> None:
    assert slugify_model("gpt-4-1106-preview") == "gpt-4-1106-preview"
    assert slugify_model("mistralai/Mixtral-8x7B") == "mixtral-8x7b"
    assert slugify_model("WizardLM/WizardLM-13B-V1.2") == "wizardlm-13b-v1.2"
    assert slugify_model("org/My Model (beta)") == "my-model-beta"


def _log() -> pd.DataFrame:
    rows = []
    for model, cost in (("org/Big-Model", 0.01), ("small", 0.001), ("other/Big-Model", 0.005), ("zeta", None),
                        ("alpha", None)):
        for i in range(2):
            rows.append({"prompt_id": f"p{i}", "prompt": f"q{i}", "model": model, "score": float(i),
                         "cost_usd": cost, "output_tokens": 100 + 10 * i})
    return pd.DataFrame(rows)


def test_draft_catalog_order_names_and_policy() -> None:
    log = _log()
    before = log.copy()
    cat, notes = draft_catalog_with_notes(log, name="mine")
    pd.testing.assert_frame_equal(log, before)
    assert cat.name == "mine"
    assert cat.models == ["small", "other/Big-Model", "org/Big-Model", "alpha", "zeta"]
    assert cat.tier_names == ["small", "other-big-model", "org-big-model", "alpha", "zeta"]
    assert [t.provider for t in cat.tiers] == ["unknown", "other", "org", "unknown", "unknown"]
    assert all(t.input_usd_per_1m is None and t.output_usd_per_1m is None for t in cat.tiers)
    assert cat.tiers[0].typical_output_tokens == 105
    assert cat.acceptability.threshold == 1.0
    assert cat.planning.min_plan_tier == "zeta"
    assert "no logged cost" in notes["alpha"] and "TODO" in notes["small"]


def test_draft_catalog_graded_threshold_and_no_costs() -> None:
    log = pd.DataFrame({"model": ["b/x", "a/y"], "score": [0.5, 1.0], "prompt": ["p", "p"], "prompt_id": ["1", "1"]})
    cat = draft_catalog(log)
    assert cat.models == ["a/y", "b/x"]
    assert cat.acceptability.threshold == 0.7


def test_commented_yaml_round_trips() -> None:
    cat, notes = draft_catalog_with_notes(_log())
    text = catalog_to_commented_yaml(cat, notes, header="drafted from a log\nreview before use")
    assert text.startswith("# drafted from a log\n# review before use\n")
    assert "# mean logged cost" in text and "# no logged cost" in text
    assert Catalog.from_dict(yaml.safe_load(text)) == cat
