"""mmdsynth split: by group names and by ratio; no source group and no duplicate
group spans two splits; the render spec's ``from = "catalog"`` picks them up."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mmdsynth.datasets.catalog import Catalog, DuplicatePair, ModelRecord
from mmdsynth.datasets.splits import SplitError, assign_splits, plan_splits, split_units

# group -> number of ok models
GROUPS = {"touhou": 40, "vocaloid": 30, "kancolle": 20, "hololive": 10, "original": 6, "misc": 4, "idolm": 12, "genshin": 8}


def mid(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def run(argv: list[str]) -> int:
    """The CLI, as a user runs it (returns the exit status)."""
    from mmdsynth.cli import main

    return main(argv)


@pytest.fixture
def lib(tmp_path) -> Path:
    """A catalog of synthetic models: groups of ok models, one error, one
    near-duplicate pair linking vocaloid and kancolle, and a duplicate decision
    linking original and misc."""
    lib = tmp_path / "lib"
    with Catalog.open(lib, create=True) as cat:
        with cat.transaction():
            for group, n in GROUPS.items():
                for i in range(n):
                    cat.insert_model(ModelRecord(mid(f"{group}{i}"), f"models/{group}/m{i}/m.pmx", "pmx", f"{group} {i}", group))
            cat.insert_model(ModelRecord(mid("broken"), "models/misc/broken/b.pmx", "", "", "misc", status="error", reason="bad"))
        a, b = sorted((mid("vocaloid3"), mid("kancolle5")))
        cat.replace_duplicate_pairs([DuplicatePair(a, b, "near", 0.1, True, {})])
        cat.set_duplicate_decision(mid("original0"), "keep")
        cat.set_duplicate_decision(mid("misc1"), "duplicate", mid("original0"))
    return lib


def _groups_of(cat: Catalog) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in cat.models():
        out.setdefault(r.group, set()).add(r.split)
    return out


def test_units_join_groups_linked_by_duplicates(lib):
    with Catalog.open(lib) as cat:
        units, sizes, _ = split_units(cat)
    assert units["kancolle"] == ["kancolle", "vocaloid"] and sizes["kancolle"] == 50
    assert units["misc"] == ["misc", "original"] and sizes["misc"] == 9  # misc1 is a duplicate: not counted
    assert units["touhou"] == ["touhou"]


def test_split_by_group_names(lib):
    with Catalog.open(lib) as cat:
        plan = assign_splits(cat, val=["hololive"], test=["original"])
        assert plan.counts == {"train": 110, "val": 10, "test": 9}
        assert plan.duplicates == {"test": 1}
        assert plan.pulled == [("misc", "test", "original")]
        assert plan.groups["test"] == ["misc", "original"] and plan.unassigned == 1
        spans = _groups_of(cat)
        assert spans["misc"] == {"test", None}  # the broken model gets no split
        assert all(len(s - {None}) == 1 for s in spans.values())  # no group in two splits
        assert "train 110 models (5 groups), val 10 models (1 group), test 9 models (2 groups, +1 duplicate)" == plan.summary()
        # a re-run replaces the previous assignment
        assign_splits(cat, val=["touhou"], test=["hololive"])
        assert cat.get(mid("original0")).split == "train"
        with pytest.raises(SplitError, match="share duplicates"):
            plan_splits(cat, val=["vocaloid"], test=["kancolle"])
        with pytest.raises(SplitError, match="did you mean 'touhou'"):
            plan_splits(cat, val=["touhuo"])
        with pytest.raises(SplitError, match="both val and test"):
            plan_splits(cat, val=["touhou"], test=["touhou"])
        with pytest.raises(SplitError, match="not both"):
            plan_splits(cat, val=["touhou"], ratio=(1, 1, 1))


def test_not_duplicates_unlinks_groups(lib):
    with Catalog.open(lib) as cat:
        cat.set_distinct(mid("vocaloid3"), mid("kancolle5"))
        plan = assign_splits(cat, val=["vocaloid"], test=["kancolle"])
        assert plan.counts["val"] == 30 and plan.counts["test"] == 20


def test_split_by_ratio_is_deterministic_and_keeps_units_whole(lib):
    with Catalog.open(lib) as cat:
        a = plan_splits(cat, ratio=(0.8, 0.1, 0.1), seed=3)
        b = plan_splits(cat, ratio=(80, 10, 10), seed=3)
        assert a.assignment == b.assignment
        assert all(a.counts.get(s, 0) > 0 for s in ("train", "val", "test"))
        assert a.counts["train"] > a.counts["val"] + a.counts["test"]
        for seed in range(20):
            plan = assign_splits(cat, ratio=(0.8, 0.1, 0.1), seed=seed)
            spans = _groups_of(cat)
            assert all(len(s - {None}) == 1 for s in spans.values())
            assert cat.get(mid("vocaloid0")).split == cat.get(mid("kancolle0")).split
            assert plan.counts.get("train", 0) > 0
        with pytest.raises(SplitError, match="three numbers"):
            plan_splits(cat, ratio=(0.9, 0.1))
        for bad in ((float("inf"), 0.1, 0.1), (float("nan"), 1, 1), (-0.8, 0.9, 0.9), (0, 0, 0)):
            with pytest.raises(SplitError, match="finite numbers >= 0, not all 0"):  # inf used to put all in train
                plan_splits(cat, ratio=bad)


def test_render_spec_uses_the_catalog_splits(lib, tmp_path):
    from mmdsynth.datasets.job import catalog_records
    from mmdsynth.datasets.plan import select_models
    from mmdsynth.datasets.spec import parse_spec

    with Catalog.open(lib) as cat:
        assign_splits(cat, val=["hololive"], test=["genshin"])
        records = catalog_records(cat)
    spec = parse_spec({"library": str(lib), "output": str(tmp_path / "out"),
                       "splits": {name: {"examples": 10, "from": "catalog"} for name in ("train", "val", "test")}}, base=tmp_path)
    chosen = {s.name: select_models(s, records) for s in spec.splits}
    assert {m.group for m in chosen["val"]} == {"hololive"} and len(chosen["val"]) == 10
    assert {m.group for m in chosen["test"]} == {"genshin"}
    assert mid("misc1") not in {m.model_id for ms in chosen.values() for m in ms}  # duplicates are not rendered
    assert sum(len(v) for v in chosen.values()) == sum(GROUPS.values()) - 1


def test_split_cli(lib, capsys):
    assert run(["split", str(lib), "--val", "hololive", "--test", "original", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "val 10 models (1 group)" in out and "dry run" in out
    assert "group 'misc' goes to test with 'original'" in err
    with Catalog.open(lib) as cat:
        assert cat.get(mid("hololive0")).split is None
    assert run(["split", str(lib), "--ratio", "0.9,0.05,0.05", "--seed", "1"]) == 0
    assert "train" in capsys.readouterr().out
    assert run(["split", str(lib), "--val", "nope"]) == 2
    assert "no source group 'nope'" in capsys.readouterr().err
    assert run(["split", str(lib), "--ratio", "a,b"]) == 2


def test_split_cli_ratio_messages(lib, capsys):
    """Shares not adding up to 1 are used scaled, with a note saying so; bad ones are one-line errors."""
    assert run(["split", str(lib), "--ratio", "0.8,0.3,0.1", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "note: --ratio 0.8,0.3,0.1 adds up to 1.2, not 1; used as shares 0.667,0.25,0.0833" in err
    assert run(["split", str(lib), "--ratio", "0.8,0.1,0.1", "--dry-run"]) == 0
    assert "note" not in capsys.readouterr().err
    for bad in ("inf,0.1,0.1", "nan,1,1", "1,2"):
        assert run(["split", str(lib), "--ratio", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error: --ratio" in err
    with Catalog.open(lib) as cat:
        assert all(r.split is None for r in cat.models())  # nothing written
