"""Shard format v1: writer/reader round trip, atomic writes, index.json, sha256, fork safety."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

import mmdsynth
from mmdsynth.datasets import shards as S
from mmdsynth.datasets.codecs import Codec, codec_of_dataset
from mmdsynth.datasets.plan import HeadBounds, PlanModel, plan_split
from mmdsynth.datasets.spec import parse_spec
from mmdsynth.mmd.schema import THA1, MorphAssignment

SIZE = 64
NAMES = tuple(THA1.names)
RANGES = tuple((float(a), float(b)) for a, b in THA1.ranges())


def synth_image(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A character-like RGBA image: an opaque textured blob with a soft edge,
    exactly (0, 0, 0, 0) outside."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size * rng.uniform(0.45, 0.6), size * rng.uniform(0.4, 0.6)
    d = ((yy - cy) / (size * 0.42)) ** 2 + ((xx - cx) / (size * 0.3)) ** 2
    alpha = np.clip((1.0 - d) * 8, 0, 1)
    img = np.zeros((size, size, 4), np.float32)
    img[..., :3] = rng.integers(0, 256, 3) * (0.7 + 0.3 * np.sin(xx / 5 + yy / 7))[..., None]
    img[..., 3] = alpha * 255
    out = np.clip(img, 0, 255).astype(np.uint8)
    out[alpha <= 0] = 0
    return out


def make_meta(index: int = 0, split: str = "train", size: int = SIZE) -> S.ShardMeta:
    return S.ShardMeta(schema="tha1", parameter_names=NAMES, parameter_ranges=RANGES, max_angle_deg=15.0, preset="test",
                       framing={"projection": "orthographic", "width": size, "height": size}, image_size=(size, size),
                       renderer="synthetic", seed=7, split=split, shard_index=index, spec_json='{"x":1}',
                       plan_fingerprint=f"fp{index}")


def write_shard(path, n=5, models=(("a", "Model A", "a/a.pmx"), ("b", "Model B", "b/b.pmx")), seed=0, index=0,
                split="train", order=None, **kw):
    """Write a synthetic shard; returns (ShardInfo, expected examples as dicts)."""
    rng = np.random.default_rng(seed)
    expected = []
    with S.ShardWriter(path, make_meta(index, split), n, **kw) as w:
        rests = []
        for mid, name, mpath in models:
            rest = synth_image(rng)
            rests.append(rest)
            w.add_model(mid, name, mpath, rest, light=(1.0, 0.5))
        rows = []
        for k in range(n):
            m = k % len(models)
            pose = THA1.constrain(THA1.sample(rng), MorphAssignment())
            rows.append(dict(rest=rests[m], morphed=synth_image(rng), posed=synth_image(rng), pose=pose,
                             light=np.array([rng.uniform(0.5, 1.2), 0.5], np.float32), model_id=models[m][0],
                             model_name=models[m][1], model_path=models[m][2], model=m))
        for k in (order if order is not None else range(n)):
            r = rows[k]
            w.add_example(r["model"], r["pose"], r["morphed"], r["posed"], float(r["light"][0]), float(r["light"][1]),
                          position=k if order is not None else None)
        expected = rows
    return w.info, expected


def write_split(out_dir, split="train", shard_sizes=(5, 4, 3), seed=0, models=None):
    """A synthetic split with index.json; returns the expected examples in order."""
    split_dir = Path(out_dir) / split
    expected = []
    for i, n in enumerate(shard_sizes):
        kw = {"models": models} if models is not None else {}
        info, rows = write_shard(split_dir / f"shard-{i:05d}.h5", n=n, seed=seed + i, index=i, split=split, **kw)
        S.update_index(split_dir, shard=info, split=split)
        expected += rows
    return expected


def assert_example(got, exp):
    for key in ("rest", "morphed", "posed"):
        assert got[key].dtype == np.uint8 and got[key].shape == (SIZE, SIZE, 4)
        np.testing.assert_array_equal(got[key], exp[key])
    assert got["pose"].dtype == np.float32 and got["pose"].shape == (6,)
    np.testing.assert_array_equal(got["pose"], np.asarray(exp["pose"], np.float32))
    assert got["light"].dtype == np.float32
    np.testing.assert_allclose(got["light"], exp["light"], rtol=1e-6)
    assert got["model_id"] == exp["model_id"] and got["model_name"] == exp["model_name"]
    assert got["model_path"] == exp["model_path"]


# ----------------------------------------------------------------------------- writer / format


def test_round_trip_datasets_attributes_chunks(tmp_path):
    path = tmp_path / "train" / "shard-00000.h5"
    info, expected = write_shard(path, n=5)
    assert info.path == path and info.examples == 5 and info.models == 2
    assert info.sha256 == S.file_sha256(path) and info.bytes == path.stat().st_size
    with h5py.File(path, "r") as f:
        for name in ("rest", "morphed", "posed"):
            ds = f[name]
            assert ds.dtype == np.uint8
            assert ds.chunks == (1, SIZE, SIZE, 4), "one image per chunk"
            assert codec_of_dataset(ds) == Codec("lz4")  # the default
        assert f["rest"].shape == (2, SIZE, SIZE, 4)
        assert f["morphed"].shape == f["posed"].shape == (5, SIZE, SIZE, 4)
        assert f["model"].dtype == np.int32 and f["model"][()].tolist() == [0, 1, 0, 1, 0]
        assert f["pose"].dtype == np.float32 and f["pose"].shape == (5, 6)
        assert f["light"].dtype == np.float32 and f["light"].shape == (5, 2)
        assert f["rest_light"].dtype == np.float32 and f["rest_light"][()].tolist() == [[1.0, 0.5], [1.0, 0.5]]
        assert f["models"].shape == (2, 3)
        assert f["models"].asstr()[()].tolist() == [["a", "Model A", "a/a.pmx"], ["b", "Model B", "b/b.pmx"]]
        a = f.attrs
        assert a["format"] == "mmdsynth-shard" and a["format_version"] == 1
        assert a["schema"] == "tha1"
        assert list(a["parameter_names"]) == list(NAMES)
        np.testing.assert_array_equal(a["parameter_ranges"], np.array(RANGES, np.float32))
        assert a["max_angle_deg"] == 15.0 and a["preset"] == "test"
        assert json.loads(a["framing"])["projection"] == "orthographic"
        assert a["image_size"].tolist() == [SIZE, SIZE]
        assert a["renderer"] == "synthetic" and a["seed"] == 7 and a["split"] == "train" and a["shard_index"] == 0
        assert a["package_version"] == mmdsynth.__version__
        assert a["spec"] == '{"x":1}' and a["plan_fingerprint"] == "fp0"
        assert a["examples"] == 5 and a["num_models"] == 2 and a["compression"] == "lz4"
        assert a["model_id_type"] == "str" and list(a["models_columns"]) == ["id", "name", "path"]
    examples = S.open_shard(path)
    assert len(examples) == 5
    for k in range(5):
        assert_example(examples[k], expected[k])


@pytest.mark.parametrize("compression,level,name", [("gzip", 6, "gzip-6"), ("zstd", 5, "zstd-5"), ("lzf", None, "lzf")])
def test_other_codecs_with_levels(tmp_path, compression, level, name):
    path = tmp_path / "g.h5"
    _, expected = write_shard(path, n=2, compression=compression, compression_level=level)
    with h5py.File(path, "r") as f:
        assert codec_of_dataset(f["posed"]) == Codec(compression, level)
        assert f.attrs["compression"] == name
    assert_example(S.open_shard(path)[1], expected[1])


def test_integer_model_ids_round_trip(tmp_path):
    path = tmp_path / "i.h5"
    write_shard(path, n=3, models=((17, "A", "a.pmx"), (4, "B", "b.pmx")))
    ex = S.open_shard(path)
    assert [ex[i]["model_id"] for i in range(3)] == [17, 4, 17]
    assert isinstance(ex[0]["model_id"], int)


def test_examples_written_out_of_order_land_at_their_positions(tmp_path):
    path = tmp_path / "o.h5"
    _, expected = write_shard(path, n=6, order=[3, 0, 5, 1, 4, 2])
    ex = S.open_shard(path)
    for k in range(6):
        assert_example(ex[k], expected[k])


def test_writer_validation(tmp_path):
    rng = np.random.default_rng(0)
    img = synth_image(rng)
    with S.ShardWriter(tmp_path / "v.h5", make_meta(), 1) as w:
        with pytest.raises(ValueError, match="rest image"):
            w.add_model("a", "A", "a", img[:, :, :3], light=(1, 0.5))
        with pytest.raises(ValueError, match="light"):
            w.add_model("a", "A", "a", img, light=(-1, 0.5))
        m = w.add_model("a", "A", "a", img, light=(1, 0.5))
        with pytest.raises(ValueError, match="added twice"):
            w.add_model("a", "A", "a", img, light=(1, 0.5))
        with pytest.raises(ValueError, match="model row 3 has not been added"):
            w.add_example(3, np.zeros(6), img, img, 1, 0.5)
        with pytest.raises(ValueError, match="pose must be 6 finite numbers"):
            w.add_example(m, np.zeros(5), img, img, 1, 0.5)
        with pytest.raises(ValueError, match=r"pose head_x=1.5 is outside \[-1, 1\]"):
            w.add_example(m, [0, 0, 0, 1.5, 0, 0], img, img, 1, 0.5)
        with pytest.raises(ValueError, match="morphed image"):
            w.add_example(m, np.zeros(6), img.astype(np.float32), img, 1, 0.5)
        with pytest.raises(ValueError, match="light magnitudes"):
            w.add_example(m, np.zeros(6), img, img, float("nan"), 0.5)
        with pytest.raises(ValueError, match="outside"):
            w.add_example(m, np.zeros(6), img, img, 1, 0.5, position=1)
        w.add_example(m, np.zeros(6), img, img, 1, 0.5)
        with pytest.raises(ValueError, match="written twice"):
            w.add_example(m, np.zeros(6), img, img, 1, 0.5, position=0)
    assert (tmp_path / "v.h5").is_file()
    with pytest.raises(ValueError, match="compression"):
        S.ShardWriter(tmp_path / "x.h5", make_meta(), 1, compression="brotli")
    with pytest.raises(ValueError, match="takes no level"):
        S.ShardWriter(tmp_path / "x.h5", make_meta(), 1, compression="lz4", compression_level=3)
    with pytest.raises(ValueError, match="num_examples"):
        S.ShardWriter(tmp_path / "x.h5", make_meta(), 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.h5"]


# ----------------------------------------------------------------------------- atomic writes


def test_exception_mid_write_leaves_no_file_and_no_temp(tmp_path):
    folder = tmp_path / "train"
    rng = np.random.default_rng(0)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        with S.ShardWriter(folder / "shard-00000.h5", make_meta(), 4) as w:
            assert any(folder.iterdir()), "the writer works on a temporary file"
            assert not (folder / "shard-00000.h5").exists()
            m = w.add_model("a", "A", "a", synth_image(rng), light=(1, 0.5))
            w.add_example(m, np.zeros(6), synth_image(rng), synth_image(rng), 1, 0.5)
            raise RuntimeError("renderer crashed")
    assert list(folder.iterdir()) == []


def test_incomplete_shard_is_not_renamed_into_place(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(S.ShardError, match="3 of 4 examples were not written"):
        with S.ShardWriter(tmp_path / "s.h5", make_meta(), 4) as w:
            m = w.add_model("a", "A", "a", synth_image(rng), light=(1, 0.5))
            w.add_example(m, np.zeros(6), synth_image(rng), synth_image(rng), 1, 0.5)
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path):
    path = tmp_path / "s.h5"
    info, _ = write_shard(path, n=2)
    with pytest.raises(KeyboardInterrupt):
        with S.ShardWriter(path, make_meta(), 2):
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    assert S.verify_shard(path, info.sha256)


def test_abandoned_writer_removes_its_temp(tmp_path):
    w = S.ShardWriter(tmp_path / "s.h5", make_meta(), 2)
    assert len(list(tmp_path.iterdir())) == 1
    w.abort()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- index.json, sha256, resume


def test_index_json_records_shards_and_skipped(tmp_path):
    split_dir = tmp_path / "train"
    assert S.load_index(split_dir)["shards"] == []
    write_split(tmp_path, shard_sizes=(5, 3))
    skipped = [{"model_id": 9, "name": "x", "path": "x.pmx", "reason": "no mouth-open morph (あ)"}]
    S.update_index(split_dir, skipped=skipped, planned={"shards": 2, "examples": 8, "models": 2})
    S.update_index(split_dir, failed=[{"model_id": 3, "name": "y", "path": "y.pmx", "reason": "bad file"}])
    index = json.loads((split_dir / "index.json").read_text(encoding="utf-8"))
    assert index["format"] == "mmdsynth-split-index" and index["version"] == 1 and index["split"] == "train"
    assert [s["file"] for s in index["shards"]] == ["shard-00000.h5", "shard-00001.h5"]
    assert [s["examples"] for s in index["shards"]] == [5, 3] and index["examples"] == 8
    assert index["planned"] == {"shards": 2, "examples": 8, "models": 2}
    assert index["skipped"] == skipped
    assert index["failed"][0]["reason"] == "bad file"
    for s in index["shards"]:
        assert s["sha256"] == S.file_sha256(split_dir / s["file"])
        assert s["plan"].startswith("fp") and s["renderer"] == "synthetic"
    # replacing a shard's entry keeps one entry per file
    info, _ = write_shard(split_dir / "shard-00001.h5", n=4, seed=99, index=1)
    index = S.update_index(split_dir, shard=info)
    assert [s["examples"] for s in index["shards"]] == [5, 4] and index["examples"] == 9
    index = S.update_index(split_dir, remove=["shard-00000.h5"])
    assert [s["file"] for s in index["shards"]] == ["shard-00001.h5"]
    assert not any(p.name.endswith(".tmp") for p in split_dir.iterdir())


def test_bad_index_is_an_error(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(S.ShardError, match="not valid JSON"):
        S.load_index(tmp_path)
    (tmp_path / "index.json").write_text('{"format": "other"}')
    with pytest.raises(S.ShardError, match="not an mmdsynth split index"):
        S.load_index(tmp_path)


def test_verify_shard_detects_corruption_and_truncation(tmp_path):
    path = tmp_path / "train" / "shard-00000.h5"
    info, _ = write_shard(path, n=3)
    S.update_index(path.parent, shard=info)
    assert S.verify_shard(path, info.sha256)
    assert S.shard_is_complete(path)
    assert S.shard_is_complete(path, fingerprint="fp0")
    assert not S.shard_is_complete(path, fingerprint="another plan")
    assert not S.verify_shard(path, None) and not S.verify_shard(path, "")

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not S.verify_shard(path, info.sha256)
    assert not S.shard_is_complete(path)

    path.write_bytes(bytes(data[: len(data) // 3]))
    assert not S.verify_shard(path, info.sha256)
    path.unlink()
    assert not S.verify_shard(path, info.sha256)
    assert not S.shard_is_complete(path)
    assert not S.shard_is_complete(tmp_path / "other" / "shard-00000.h5")


def test_resume_with_a_planned_split(tmp_path):
    """The render-job loop: complete shards are kept, a corrupt one is redone."""
    spec = parse_spec({"library": str(tmp_path), "output": str(tmp_path / "out"), "shard_size": 2,
                       "splits": {"train": {"examples": 5, "models": "all"}}}, base=tmp_path)
    full = MorphAssignment(wink_left="l", wink_right="r", mouth="あ")
    plan = plan_split(spec, "train", [PlanModel(i, f"m{i}", f"m{i}.pmx", full, HeadBounds(2, 1, 0)) for i in range(3)])
    rng = np.random.default_rng(0)

    def render_all():
        done = []
        for shard in plan.shards:
            if S.shard_is_complete(shard.path, shard.fingerprint):
                continue
            meta = S.ShardMeta(schema="tha1", parameter_names=NAMES, parameter_ranges=RANGES, max_angle_deg=15.0,
                               preset="t", framing={}, image_size=(SIZE, SIZE), renderer="synthetic", seed=spec.seed,
                               split="train", shard_index=shard.index, spec_json=spec.to_json(),
                               plan_fingerprint=shard.fingerprint)
            with S.ShardWriter(shard.path, meta, len(shard.examples)) as w:
                for m in shard.models:
                    w.add_model(m.model_id, m.name, m.path, synth_image(rng), light=(1, 0.5))
                    for ex in shard.examples_of(m.model_id):
                        w.add_planned(ex, synth_image(rng), synth_image(rng))
            S.update_index(plan.split_dir, shard=w.info, split="train", planned=plan.planned_record())
            done.append(shard.index)
        return done

    assert render_all() == [0, 1, 2]
    assert render_all() == []
    victim = plan.shards[1].path
    victim.write_bytes(victim.read_bytes()[:1000])
    assert render_all() == [1]
    examples = S.open_split(tmp_path / "out", "train")
    assert len(examples) == 5
    flat = [e for s in plan.shards for e in s.examples]
    for k in range(5):
        got = examples[k]
        assert got["model_id"] == flat[k].model_id
        np.testing.assert_array_equal(got["pose"], flat[k].pose)
        assert got["light"][0] == np.float32(flat[k].ambient)


def test_meta_for_shard_from_a_spec(tmp_path):
    spec = parse_spec({"library": str(tmp_path), "output": "o", "seed": 3, "max_angle": 20,
                       "splits": {"train": {"examples": 2, "models": "all"}}}, base=tmp_path)
    plan = plan_split(spec, "train", [PlanModel(1, "m", "m.pmx", MorphAssignment(wink_both="b", mouth="あ"), HeadBounds(2, 1, 0))])
    meta = S.ShardMeta.for_shard(spec, plan.shards[0], renderer="llvmpipe")
    assert meta.image_size == (256, 256) and meta.preset == "tha1"
    assert meta.framing["head_top_row"] == 64 and meta.framing["center_column"] == 128
    assert meta.max_angle_deg == 20 and meta.seed == 3 and meta.split == "train" and meta.shard_index == 0
    assert meta.plan_fingerprint == plan.shards[0].fingerprint and meta.parameter_names == NAMES
    assert json.loads(meta.spec_json)["seed"] == 3


# ----------------------------------------------------------------------------- reading


def test_open_split_sequence_behaviour(tmp_path):
    expected = write_split(tmp_path, shard_sizes=(5, 4, 3))
    examples = S.open_split(tmp_path, "train")
    assert len(examples) == 12
    assert [f.name for f in examples.files] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    for k in (0, 4, 5, 8, 9, 11):
        assert_example(examples[k], expected[k])
    assert_example(examples[-1], expected[11])
    assert_example(examples[-12], expected[0])
    assert examples[5]["shard"] == "shard-00001.h5" and examples[5]["position"] == 0 and examples[5]["index"] == 5
    assert examples.locate(6) == (tmp_path / "train" / "shard-00001.h5", 1)
    with pytest.raises(IndexError):
        examples[12]
    with pytest.raises(IndexError):
        examples[-13]
    with pytest.raises(TypeError):
        examples["a"]
    part = examples[3:10:2]
    assert len(part) == 4
    for j, k in enumerate(range(3, 10, 2)):
        assert_example(part[j], expected[k])
    assert_example(part[-1], expected[9])
    assert len(examples[100:]) == 0
    assert examples.parameter_names == list(NAMES)
    assert examples.attrs["split"] == "train"
    assert sum(1 for _ in examples[:3]) == 3
    examples.close()
    assert_example(examples[2], expected[2])  # reopens


def test_open_split_without_index_reads_the_folder(tmp_path):
    expected = write_split(tmp_path, shard_sizes=(2, 3))
    (tmp_path / "train" / "index.json").unlink()
    examples = S.open_split(tmp_path, "train")
    assert len(examples) == 5
    assert_example(examples[4], expected[4])


def test_open_split_errors(tmp_path):
    write_split(tmp_path, shard_sizes=(2, 2))
    with pytest.raises(S.ShardError, match=r"no such split folder \(splits there: train\)"):
        S.open_split(tmp_path, "val")
    (tmp_path / "train" / "shard-00001.h5").unlink()
    with pytest.raises(S.ShardError, match="listed in index.json but missing"):
        S.open_split(tmp_path, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(S.ShardError, match="no shards"):
        S.open_split(tmp_path, "empty")
    bogus = tmp_path / "bogus.h5"
    bogus.write_bytes(b"not hdf5 at all")
    with pytest.raises(S.ShardError, match="not a readable HDF5 file"):
        S.open_shard(bogus)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(S.ShardError, match="not an mmdsynth shard"):
        S.open_shard(tmp_path / "other.h5")
    with pytest.raises(S.ShardError, match="no such shard file"):
        S.open_shard(tmp_path / "missing.h5")
    assert S.list_splits(tmp_path) == ["train"]


@pytest.mark.parametrize("compression,level,where", [("zstd", 1, "middle"), ("gzip", 1, "middle"),
                                                     ("lz4", None, "start"), ("lzf", None, "start")])
def test_damaged_image_chunk_is_a_shard_error_naming_the_example(tmp_path, compression, level, where):
    """Checksummed codecs notice any damage; lz4 and lzf only damage to their structure."""
    path = tmp_path / "shard-00000.h5"
    _, expected = write_shard(path, n=4, compression=compression, compression_level=level)
    with h5py.File(path, "r") as f:
        chunk = f["posed"].id.get_chunk_info_by_coord((2, 0, 0, 0))
    data = bytearray(path.read_bytes())
    at = chunk.byte_offset + (chunk.size // 2 if where == "middle" else 0)
    data[at:at + 32] = bytes(b ^ 0x5A for b in data[at:at + 32])
    path.write_bytes(bytes(data))
    with S.open_shard(path) as examples:
        assert_example(examples[1], expected[1])  # the other rows still read
        with pytest.raises(S.ShardError, match=r"shard-00000\.h5: row 2: image data is damaged"):
            examples[2]


def _child_reads(examples, indices, queue):
    try:
        out = []
        for k in indices:
            ex = examples[k]
            out.append((k, int(ex["morphed"].astype(np.int64).sum()), int(ex["rest"].astype(np.int64).sum()),
                        ex["pose"].tolist(), ex["model_id"], os.getpid()))
        queue.put(("ok", out))
    except BaseException as exc:  # noqa: BLE001 - report to the parent
        queue.put(("error", repr(exc)))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_open_split_works_after_fork(tmp_path):
    expected = write_split(tmp_path, shard_sizes=(4, 4))
    examples = S.open_split(tmp_path, "train")
    assert_example(examples[1], expected[1])  # the parent has files open before the fork
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_child_reads, args=(examples, idx, queue)) for idx in ([0, 5, 7], [6, 2, 3])]
    for c in children:
        c.start()
    results = [queue.get(timeout=60) for _ in children]
    for c in children:
        c.join(timeout=60)
        assert c.exitcode == 0
    for status, rows in results:
        assert status == "ok", rows
        for k, morphed_sum, rest_sum, pose, model_id, pid in rows:
            assert pid != os.getpid()
            assert morphed_sum == int(expected[k]["morphed"].astype(np.int64).sum())
            assert rest_sum == int(expected[k]["rest"].astype(np.int64).sum())
            assert pose == np.asarray(expected[k]["pose"], np.float32).tolist()
            assert model_id == expected[k]["model_id"]
    # the parent's handles still work
    assert_example(examples[7], expected[7])


def test_pickling_drops_handles(tmp_path):
    expected = write_split(tmp_path, shard_sizes=(3,))
    examples = S.open_split(tmp_path, "train")
    examples[0]
    clone = pickle.loads(pickle.dumps(examples))
    assert len(clone) == 3
    assert_example(clone[2], expected[2])


def test_rest_images_are_cached_but_returned_fresh(tmp_path):
    write_split(tmp_path, shard_sizes=(4,))
    examples = S.open_split(tmp_path, "train")
    a = examples[0]["rest"]
    a[:] = 0
    assert examples[2]["rest"].any()


def test_measure_read_rate(tmp_path):
    write_split(tmp_path, shard_sizes=(3, 3))
    rate = S.measure_read_rate(S.open_split(tmp_path, "train"), n=20, warmup=2)
    assert rate["examples"] == 20 and rate["per_second"] > 0 and rate["per_cpu_second"] > 0


def _add_records(split_dir, node, count):
    for i in range(count):
        k = node * 100 + i
        S.update_index(split_dir, shard={"file": f"shard-{k:05d}.h5", "index": k, "examples": 1, "models": 1,
                                         "bytes": 1, "sha256": "0" * 64, "plan": ""})


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_concurrent_index_updates_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    workers = [ctx.Process(target=_add_records, args=(tmp_path, n, 8)) for n in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    index = S.load_index(tmp_path)
    assert len(index["shards"]) == 32 and index["examples"] == 32
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize("compression, level", [("lz4", None), ("zstd", 1), ("lzf", None), ("gzip", 1)])
def test_pre_encoded_chunks_read_back_exactly(tmp_path, compression, level):
    rng = np.random.default_rng(3)
    images = np.stack([synth_image(rng) for _ in range(5)])
    encoded = S.encode_images(images, compression, level)
    assert len(encoded) == 5 and all(len(e.data) < images[0].nbytes for e in encoded)
    path = tmp_path / "enc.h5"
    with S.ShardWriter(path, make_meta(), num_examples=2, compression=compression, compression_level=level) as w:
        m = w.add_model("a", "A", "a/a.pmx", encoded[0], light=(1.0, 0.5))
        w.add_example(m, np.zeros(6), encoded[1], encoded[2], 1.0, 0.5)
        w.add_example(m, np.zeros(6), images[3], encoded[4], 1.0, 0.5)  # arrays and chunks mix
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["rest"][0], images[0])
        np.testing.assert_array_equal(f["morphed"][()], images[[1, 3]])
        np.testing.assert_array_equal(f["posed"][()], images[[2, 4]])
        # An array and its pre-encoded chunk are stored as the same bytes (one encoder per codec).
        mask, chunk = f["morphed"].id.read_direct_chunk((1, 0, 0, 0))
        assert mask == 0 and bytes(chunk) == S.encode_images(images[3:4], compression, level)[0].data
    with pytest.raises(ValueError, match="encoded as"):
        with S.ShardWriter(tmp_path / "x.h5", make_meta(), num_examples=1, compression="gzip", compression_level=9) as w:
            w.add_model("a", "A", "a", encoded[0], light=(1.0, 0.5))
