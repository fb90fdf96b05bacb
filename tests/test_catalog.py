"""Tests for router.catalog (YAML round trip, validation) and training.catalog_draft."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from router.catalog import DEFAULT_CATALOG_PATH, Catalog, CatalogError, Tier
from training.catalog_draft import (
    catalog_to_commented_yaml,
    draft,
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


# ---- non-finite, negative, absurd and boolean numbers (issue 11) ------------------------------------------------
@pytest.mark.parametrize(
    ("field", "literal", "why"),
    [
        ("input_usd_per_1m", ".inf", "finite number"),
        ("output_usd_per_1m", ".nan", "finite number"),
        ("output_usd_per_1m", "1.0e+400", "finite number"),
        ("input_usd_per_1m", "-.inf", "finite number"),
        ("input_usd_per_1m", "-0.5", "greater than or equal to 0"),
        ("output_usd_per_1m", "2.0e+6", "less than or equal to 100000"),
        ("input_usd_per_1m", "true", "must be a number, not true/false"),
        ("input_usd_per_1m", "cheap", "valid number (got 'cheap')"),
        ("batch_discount", ".nan", "finite number"),
        ("batch_discount", "false", "must be a number, not true/false"),
        ("batch_discount", "-0.1", "greater than or equal to 0"),
        ("typical_output_tokens", ".inf", "finite number"),
        ("typical_output_tokens", "-3", "greater than or equal to 0"),
        ("typical_output_tokens", "2000000000", "less than or equal to 1000000000"),
        ("typical_output_tokens", "true", "must be a number, not true/false"),
    ],
)
def test_bad_tier_numbers_are_refused_naming_tier_and_field(
    tmp_path: Path, field: str, literal: str, why: str
) -> None:
    path = tmp_path / "catalog.yaml"
    text = CATALOG_YAML.replace("output_usd_per_1m: 30}", f"output_usd_per_1m: 30, {field}: {literal}}}")
    if field == "output_usd_per_1m":
        text = CATALOG_YAML.replace("output_usd_per_1m: 30}", f"{field}: {literal}}}")
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        Catalog.from_yaml(path)
    msg = str(info.value)
    assert str(path) in msg
    assert f"tiers.1.{field} (tier 'large'): " in msg and why in msg


@pytest.mark.parametrize("value", [float("inf"), float("nan"), True, 1.5, -0.1])
def test_bad_thresholds_are_refused(value: object) -> None:
    data = yaml.safe_load(CATALOG_YAML)
    data["acceptability"]["threshold"] = value
    with pytest.raises(CatalogError, match=r"acceptability\.threshold: "):
        Catalog.from_dict(data)
    data = yaml.safe_load(CATALOG_YAML)
    data["acceptability"]["per_task"]["summarize"] = value
    with pytest.raises(CatalogError, match=r"acceptability\.per_task\.summarize: "):
        Catalog.from_dict(data)


def test_plain_numbers_still_parse() -> None:
    data = yaml.safe_load(CATALOG_YAML.replace("input_usd_per_1m: 10,", "input_usd_per_1m: 1e-1,"))
    assert data["tiers"][1]["input_usd_per_1m"] == "1e-1"  # PyYAML reads exponents without a dot as text
    data["tiers"][1]["typical_output_tokens"] = 512.0  # a whole number written as a float
    cat = Catalog.from_dict(data)
    assert cat.tiers[1].input_usd_per_1m == pytest.approx(0.1)
    assert cat.tiers[1].typical_output_tokens == 512 and isinstance(cat.tiers[1].typical_output_tokens, int)
    assert Catalog.from_dict(yaml.safe_load(demo_catalog().to_yaml())) == demo_catalog()


def test_catalog_sidecar_path() -> None:
    from router.catalog import catalog_sidecar_path

    assert catalog_sidecar_path("out/feedback.csv") == Path("out/feedback.catalog.yaml")
    assert catalog_sidecar_path("feedback.csv.gz") == Path("feedback.catalog.yaml")
    assert catalog_sidecar_path("/x/logs.v2.parquet") == Path("/x/logs.v2.catalog.yaml")
    assert catalog_sidecar_path("noext") == Path("noext.catalog.yaml")


def _catalog(*tiers: tuple[str, float | None, float | None]) -> Catalog:
    return Catalog(
        tiers=[Tier(name=n, model=f"m-{n}", input_usd_per_1m=i, output_usd_per_1m=o) for n, i, o in tiers]
    )


def test_review_flags_an_inverted_price_order_and_missing_prices() -> None:
    errors, warnings = _catalog(("small", 0.5, 1.5), ("large", 10, 30)).review()
    assert errors == [] and warnings == []
    errors, warnings = _catalog(("small", 10, 30), ("mid", None, None), ("large", 0.5, 1.5)).review()
    assert len(errors) == 1 and "tier 'large'" in errors[0] and "cheaper than tier 'small'" in errors[0]
    assert len(warnings) == 1 and "tier 'mid'" in warnings[0] and "input_usd_per_1m" in warnings[0]
    # prices that cross: a typical call (1000 in, 256 out) is cheaper on the later tier -> a warning only
    errors, warnings = _catalog(("a", 0.1, 10.0), ("b", 1.0, 2.0)).review()
    assert errors == [] and len(warnings) == 1 and "tier 'b' costs less than tier 'a'" in warnings[0]
    assert Catalog.from_yaml(DEFAULT_CATALOG_PATH).review() == ([], [])  # the shipped catalog is in order


def test_draft_without_costs_says_its_order_is_a_guess() -> None:
    log = pd.DataFrame({"model": ["zeta/big", "alpha/small", "zeta/big"], "score": [1.0, 0.0, 1.0]})
    d = draft(log)
    assert d.catalog.tier_names == ["small", "big"] and d.uncosted == ["small", "big"]
    header = d.header("log.csv")
    assert "ALPHABETICAL" in header and "fill them in" in header
    text = catalog_to_commented_yaml(d.catalog, d.notes, header=header)
    assert "# Drafted by `tierwise catalog init` from log.csv" in text and "# no logged cost (2 attempts)" in text
    costed = draft(log.assign(cost_usd=[2.0, 1.0, 2.0]))
    assert costed.uncosted == [] and "mean logged cost" in costed.header("x")
