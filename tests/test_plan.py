"""Planning: determinism, even spread, shards, tied eyes, skipped models, node splitting."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from mmdsynth.datasets.plan import (
    HeadBounds,
    PlanError,
    PlanModel,
    eligibility,
    example_rng,
    expression_only,
    plan_all,
    plan_split,
    shards_for_node,
)
from mmdsynth.datasets.spec import SpecError, parse_spec
from mmdsynth.mmd.schema import THA1, MorphAssignment

FULL = MorphAssignment(wink_left="ウィンク", wink_right="ウィンク右", wink_both="まばたき", mouth="あ")
BOTH_ONLY = MorphAssignment(wink_both="まばたき", mouth="あ")
HEAD = HeadBounds(20.0, 16.0, 0.0)


def make_spec(tmp_path, examples=100, shard_size=30, seed=5, selection=None, **extra):
    splits = {"train": {"examples": examples, **(selection or {"models": "all"})}}
    data = {"library": str(tmp_path), "output": str(tmp_path / "out"), "seed": seed, "shard_size": shard_size, "splits": splits, **extra}
    return parse_spec(data, base=tmp_path)


def models(n=7, assignment=FULL, **kw):
    return [PlanModel(i, f"model {i}", f"m{i}/m.pmx", assignment, HEAD, **kw) for i in range(n)]


def test_plan_is_deterministic_and_independent_of_record_order(tmp_path):
    spec = make_spec(tmp_path)
    recs = models(7)
    a = plan_split(spec, "train", recs)
    shuffled = recs[:]
    random.Random(3).shuffle(shuffled)
    b = plan_split(spec, "train", shuffled)
    assert [m.model_id for m in a.models] == [m.model_id for m in b.models]
    for sa, sb in zip(a.shards, b.shards):
        assert sa.fingerprint == sb.fingerprint
        for ea, eb in zip(sa.examples, sb.examples):
            assert ea.model_id == eb.model_id and ea.ambient == eb.ambient and ea.directional == eb.directional
            np.testing.assert_array_equal(ea.pose, eb.pose)


def test_seed_and_split_change_the_draws(tmp_path):
    a = plan_split(make_spec(tmp_path, seed=1), "train", models())
    b = plan_split(make_spec(tmp_path, seed=2), "train", models())
    assert not np.array_equal(a.shards[0].examples[0].pose, b.shards[0].examples[0].pose)
    spec = parse_spec({"library": str(tmp_path), "output": "o", "splits": {"train": {"examples": 5, "models": "all"}, "val": {"examples": 5, "models": "all"}}}, base=tmp_path)
    plans = plan_all(spec, models())
    assert not np.array_equal(plans["train"].shards[0].examples[0].pose, plans["val"].shards[0].examples[0].pose)


def test_even_spread_round_robin(tmp_path):
    for n_models, n_examples in [(7, 100), (5, 5), (3, 1000), (13, 29)]:
        spec = make_spec(tmp_path, examples=n_examples, shard_size=17)
        plan = plan_split(spec, "train", models(n_models))
        counts = Counter(e.model_id for s in plan.shards for e in s.examples)
        assert sum(counts.values()) == n_examples
        assert len(counts) == min(n_models, n_examples)
        assert max(counts.values()) - min(counts.values()) <= 1
        assert dict(counts) == {k: v for k, v in plan.examples_per_model().items() if v}
        # example k uses order[k % n]
        order = [m.model_id for m in plan.models]
        for s in plan.shards:
            for e in s.examples:
                assert e.model_id == order[e.index % n_models]


def test_shuffle_is_not_the_id_order(tmp_path):
    plan = plan_split(make_spec(tmp_path), "train", models(20))
    assert [m.model_id for m in plan.models] != list(range(20))
    assert sorted(m.model_id for m in plan.models) == list(range(20))


def test_shards_and_paths(tmp_path):
    spec = make_spec(tmp_path, examples=100, shard_size=30)
    plan = plan_split(spec, "train", models(7))
    assert [len(s.examples) for s in plan.shards] == [30, 30, 30, 10]
    assert [s.index for s in plan.shards] == [0, 1, 2, 3]
    assert plan.split_dir == tmp_path / "out" / "train"
    assert plan.shards[2].path == tmp_path / "out" / "train" / "shard-00002.h5"
    assert plan.shards[2].name == "shard-00002.h5"
    k = 0
    for s in plan.shards:
        ids = [m.model_id for m in s.models]
        assert len(ids) == len(set(ids))
        # models listed in order of first appearance; each example points at its model's row
        first = list(dict.fromkeys(e.model_id for e in s.examples))
        assert ids == first
        for pos, e in enumerate(s.examples):
            assert (e.index, e.position) == (k, pos)
            assert s.models[e.model].model_id == e.model_id
            k += 1
        assert {e.model_id for e in s.examples_of(ids[0])} == {ids[0]}
    assert plan.planned_record() == {"shards": 4, "examples": 100, "models": 7}
    other = plan_split(spec, "train", models(7), out_dir=tmp_path / "elsewhere")
    assert other.shards[0].path == tmp_path / "elsewhere" / "train" / "shard-00000.h5"


def test_draws_do_not_depend_on_shard_size(tmp_path):
    a = plan_split(make_spec(tmp_path, shard_size=3), "train", models())
    b = plan_split(make_spec(tmp_path, shard_size=64), "train", models())
    ea = {e.index: e for s in a.shards for e in s.examples}
    eb = {e.index: e for s in b.shards for e in s.examples}
    for k in ea:
        np.testing.assert_array_equal(ea[k].pose, eb[k].pose)


def test_lights_are_shared_by_a_model_within_a_shard(tmp_path):
    spec = make_spec(tmp_path, examples=60, shard_size=20, seed=5)
    plan = plan_split(spec, "train", models(3))
    per_shard = []
    for shard in plan.shards:
        lights = {}
        for e in shard.examples:
            first = lights.setdefault(e.model_id, (e.ambient, e.directional))
            assert (e.ambient, e.directional) == first
        # the model's first example in the shard made the draw
        for mid, (ambient, _) in lights.items():
            k = shard.examples_of(mid)[0].index
            rng = example_rng(5, "train", k)
            THA1.sample(rng, FULL)
            assert ambient == float(rng.uniform(0.5, 1.2))
        per_shard.append(lights)
    assert len({tuple(sorted(d.items())) for d in per_shard}) == len(per_shard)  # shards differ


def test_draws_follow_the_documented_stream(tmp_path):
    spec = make_spec(tmp_path, seed=11)
    plan = plan_split(spec, "train", models())
    shard = plan.shards[1]
    e = shard.examples_of(shard.examples[4].model_id)[0]  # a model's first example draws its lights
    rng = example_rng(11, "train", e.index)
    pose = THA1.constrain(THA1.sample(rng, FULL), FULL)
    np.testing.assert_array_equal(e.pose, pose)
    assert e.ambient == float(rng.uniform(0.5, 1.2))
    assert e.directional == 0.5


def test_values_in_range_and_dtypes(tmp_path):
    plan = plan_split(make_spec(tmp_path, examples=500, lighting={"ambient": [0.5, 1.2], "directional": [0.1, 0.3]}), "train", models())
    poses = np.stack([e.pose for s in plan.shards for e in s.examples])
    assert poses.dtype == np.float32 and poses.shape == (500, 6)
    r = THA1.ranges()
    assert np.all(poses >= r[:, 0]) and np.all(poses <= r[:, 1])
    amb = np.array([e.ambient for s in plan.shards for e in s.examples])
    dirl = np.array([e.directional for s in plan.shards for e in s.examples])
    assert amb.min() >= 0.5 and amb.max() <= 1.2 and amb.std() > 0.1
    assert dirl.min() >= 0.1 and dirl.max() <= 0.3
    # head parameters use the |v| density: more mass near the ends than uniform
    assert np.mean(np.abs(poses[:, 3:]) > 0.5) > 0.65


def test_tied_eyes_with_only_a_both_eyes_morph(tmp_path):
    recs = [PlanModel("tied", "tied", "t.pmx", BOTH_ONLY, HEAD), PlanModel("free", "free", "f.pmx", FULL, HEAD)]
    plan = plan_split(make_spec(tmp_path, examples=200), "train", recs)
    tied = [e.pose for s in plan.shards for e in s.examples if e.model_id == "tied"]
    free = [e.pose for s in plan.shards for e in s.examples if e.model_id == "free"]
    assert all(p[0] == p[1] for p in tied)
    assert sum(p[0] != p[1] for p in free) > 90


def test_skipped_models_and_reasons(tmp_path):
    recs = models(3) + [
        PlanModel(10, "no mouth", "a.pmx", MorphAssignment(wink_left="l", wink_right="r"), HEAD),
        PlanModel(11, "no head", "b.pmx", FULL, None),
        PlanModel(12, "one eye", "c.pmx", MorphAssignment(wink_left="l", mouth="あ"), HEAD),
        PlanModel(13, "no morphs", "d.pmx", None, HEAD),
        PlanModel(14, "upside down", "e.pmx", FULL, HeadBounds(10.0, 12.0, 0.0)),
    ]
    plan = plan_split(make_spec(tmp_path), "train", recs)
    assert sorted(m.model_id for m in plan.models) == [0, 1, 2]
    reasons = {s.model_id: s.reason for s in plan.skipped}
    assert reasons[10] == "no mouth-open morph (あ)"
    assert reasons[11] == "no head bounds annotated"
    assert reasons[12] == "no morph closes the eye of right_eye (no wink_right and no wink_both morph)"
    assert reasons[13] == "no morph assignment annotated"
    assert reasons[14].startswith("head bounds are not usable")
    records = plan.skipped_records()
    assert records[0] == {"model_id": 10, "name": "no mouth", "path": "a.pmx", "reason": "no mouth-open morph (あ)"}
    assert all(e.model_id in (0, 1, 2) for s in plan.shards for e in s.examples)


def test_auto_annotations_accepted_with_a_warning_or_skipped(tmp_path):
    recs = models(2) + [PlanModel(5, "auto", "a.pmx", FULL, HEAD, head_source="auto"),
                        PlanModel(6, "auto2", "b.pmx", FULL, HEAD, morphs_source="auto")]
    plan = plan_split(make_spec(tmp_path), "train", recs)
    assert sorted(plan.auto_annotated) == [5, 6] and len(plan.models) == 4
    assert any("2 of 4 models use automatic" in w for w in plan.warnings)
    strict = plan_split(make_spec(tmp_path, accept_auto_annotations=False), "train", recs)
    assert sorted(m.model_id for m in strict.models) == [0, 1]
    reasons = {s.model_id: s.reason for s in strict.skipped}
    assert "head bounds are an automatic suggestion" in reasons[5]
    assert "morph assignment is an automatic suggestion" in reasons[6]
    assert strict.auto_annotated == () and strict.warnings == ()


def test_no_eligible_model_is_an_error(tmp_path):
    with pytest.raises(PlanError, match=r"none of the 2 selected models can be rendered \(2 x no head bounds annotated\)"):
        plan_split(make_spec(tmp_path), "train", [PlanModel(i, "x", "x", FULL, None) for i in range(2)])


def test_unknown_split(tmp_path):
    with pytest.raises(SpecError):
        plan_split(make_spec(tmp_path), "val", models())


def test_selection_by_group_ids_catalog(tmp_path):
    recs = [PlanModel(i, f"m{i}", f"{i}.pmx", FULL, HEAD, group="a" if i < 4 else "b", split="val" if i % 2 else "train") for i in range(8)]
    by_group = plan_split(make_spec(tmp_path, selection={"groups": ["b"]}), "train", recs)
    assert sorted(m.model_id for m in by_group.models) == [4, 5, 6, 7]
    by_ids = plan_split(make_spec(tmp_path, selection={"ids": [1, 6]}), "train", recs)
    assert sorted(m.model_id for m in by_ids.models) == [1, 6]
    from_catalog = plan_split(make_spec(tmp_path, selection={"from": "catalog"}), "train", recs)
    assert sorted(m.model_id for m in from_catalog.models) == [0, 2, 4, 6]
    hashed = [PlanModel(h, h, h, FULL, HEAD) for h in ("3fa2b1", "3fa2c7", "9d01ee")]
    by_prefix = plan_split(make_spec(tmp_path, selection={"ids": ["9d", "3fa2c"]}), "train", hashed)
    assert sorted(m.model_id for m in by_prefix.models) == ["3fa2c7", "9d01ee"]
    with pytest.raises(PlanError, match="prefix '3fa2' matches 2 models"):
        plan_split(make_spec(tmp_path, selection={"ids": ["3fa2"]}), "train", hashed)
    with pytest.raises(PlanError, match=r"ids '9d' and '9d01ee' name the same model '9d01ee'; list it once"):
        plan_split(make_spec(tmp_path, selection={"ids": ["9d", "9d01ee"]}), "train", hashed)
    with pytest.raises(PlanError, match="model id 99 not in the library"):
        plan_split(make_spec(tmp_path, selection={"ids": [1, 99]}), "train", recs)
    with pytest.raises(PlanError, match="no model in group 'c'"):
        plan_split(make_spec(tmp_path, selection={"groups": ["a", "c"]}), "train", recs)
    with pytest.raises(PlanError, match="the catalog assigns no model to split 'train'"):
        plan_split(make_spec(tmp_path, selection={"from": "catalog"}), "train", [PlanModel(1, "m", "m", FULL, HEAD)])


def test_model_in_two_splits_warns(tmp_path):
    spec = parse_spec({"library": str(tmp_path), "output": "o",
                       "splits": {"train": {"examples": 5, "models": "all"}, "val": {"examples": 5, "ids": [1]}}}, base=tmp_path)
    plans = plan_all(spec, models(3))
    assert any("1 models also appear in split val" in w for w in plans["train"].warnings)
    assert any("also appear in split train" in w for w in plans["val"].warnings)


def test_fingerprint_changes_with_annotations(tmp_path):
    spec = make_spec(tmp_path)
    a = plan_split(spec, "train", models(3))
    b = plan_split(spec, "train", models(2) + [PlanModel(2, "model 2", "m2/m.pmx", FULL, HeadBounds(20.0, 15.5, 0.0))])
    changed = [sa.fingerprint != sb.fingerprint for sa, sb in zip(a.shards, b.shards)]
    assert all(changed)  # every shard uses model 2
    c = plan_split(spec, "train", models(3))
    assert [s.fingerprint for s in a.shards] == [s.fingerprint for s in c.shards]


def test_shards_for_node_disjoint_and_complete(tmp_path):
    spec = parse_spec({"library": str(tmp_path), "output": "o", "shard_size": 7,
                       "splits": {"train": {"examples": 100, "models": "all"}, "val": {"examples": 20, "models": "all"}}}, base=tmp_path)
    plans = list(plan_all(spec, models(5)).values())
    everything = [(s.split, s.index) for p in plans for s in p.shards]
    for nodes in (1, 2, 3, 5, 40):
        parts = [[(s.split, s.index) for s in shards_for_node(plans, i, nodes)] for i in range(nodes)]
        flat = [x for part in parts for x in part]
        assert len(flat) == len(set(flat)) == len(everything)
        assert set(flat) == set(everything)
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1
        # deterministic
        assert parts == [[(s.split, s.index) for s in shards_for_node(plans, i, nodes)] for i in range(nodes)]
    single = shards_for_node(plans[0], 1, 2)
    assert [s.index for s in single] == [1, 3, 5, 7, 9, 11, 13]


@pytest.mark.parametrize("node, nodes", [(2, 2), (-1, 2), (0, 0), (0, True), (1.0, 2)])
def test_shards_for_node_rejects_bad_arguments(tmp_path, node, nodes):
    plan = plan_split(make_spec(tmp_path), "train", models())
    with pytest.raises(ValueError):
        shards_for_node(plan, node, nodes)


def test_eligibility_function_directly():
    assert eligibility(PlanModel(1, "m", "m", FULL, HEAD), THA1) == []
    assert eligibility(PlanModel(1, "m", "m", BOTH_ONLY, HEAD), THA1) == []
    assert eligibility(PlanModel(1, "m", "m", FULL, HEAD, head_source="auto"), THA1, accept_auto=False) == [
        "head bounds are an automatic suggestion (the spec accepts human annotations only)"]
    assert eligibility(PlanModel(1, "m", "m", FULL, (20.0, 16.0, 0.5)), THA1) == []
    assert eligibility(PlanModel(1, "m", "m", FULL, HeadBounds(20.0, 16.0)), THA1) == []  # centre from the 頭 bone


def test_expression_only_keeps_morphs_and_rests_rotations():
    pose = np.array([0.2, 0.3, 0.9, -0.5, 0.7, 0.1], np.float32)
    expr = expression_only(THA1, pose)
    assert expr.dtype == np.float32 and expr.tolist() == pytest.approx([0.2, 0.3, 0.9, 0.0, 0.0, 0.0])
    assert pose[3] == np.float32(-0.5)  # not modified in place
    with pytest.raises(ValueError):
        expression_only(THA1, pose[:5])


def test_failed_model_is_replaced_locally(tmp_path):
    spec = make_spec(tmp_path, examples=40, shard_size=4, seed=3)
    base = plan_split(spec, "train", models(12))
    victim = base.shards[0].examples[0].model_id
    plan = plan_split(spec, "train", models(12), failed={victim: "file vanished"})
    assert victim not in {m.model_id for m in plan.models}
    assert any(s.model_id == victim and "file vanished" in s.reason for s in plan.skipped)
    for before, after in zip(base.shards, plan.shards):
        uses_victim = any(e.model_id == victim for e in before.examples)
        assert all(e.model_id != victim for e in after.examples)
        assert (before.fingerprint == after.fingerprint) == (not uses_victim)
        for e0, e1 in zip(before.examples, after.examples):
            np.testing.assert_array_equal(e0.pose if e0.model_id != victim else e1.pose, e1.pose)
