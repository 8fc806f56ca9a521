"""The main job end to end on the example character: shards, determinism,
resume after a real kill, node splitting, a broken model, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from mmdsynth.cli import main
from mmdsynth.datasets.catalog import Catalog
from mmdsynth.datasets.job import catalog_records, render_unit, run_job, unit_time_limit
from mmdsynth.datasets.plan import PlanError, plan_all
from mmdsynth.datasets.shards import load_index, open_split
from mmdsynth.datasets.spec import load_spec
from mmdsynth.mmd.example import build_example_model, write_example
from mmdsynth.mmd.pmx_write import save_pmx

SPEC = """
library = "{library}"
output = "{output}"
seed = 7
shard_size = {shard_size}

[lighting]
ambient = [0.5, 1.2]

[splits.train]
examples = {train}
models = "all"
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lib")
    example = write_example(root / "src" / "example")
    lib = root / "library"
    assert main(["add", str(lib), str(example)]) == 0
    return lib


def make_spec(tmp_path: Path, library: Path, out: str = "out", shard_size: int = 4, train: int = 12):
    path = tmp_path / f"{out}.toml"
    path.write_text(SPEC.format(library=library, output=tmp_path / out, shard_size=shard_size, train=train), encoding="utf-8")
    return load_spec(path)


def arrays(split_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for f in sorted(split_dir.glob("shard-*.h5")):
        with h5py.File(f, "r") as h:
            out[f.name] = {k: h[k][()] for k in ("rest", "morphed", "posed", "pose", "light", "model")}
    return out


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key], err_msg=f"{name}/{key}")


@pytest.fixture(scope="module")
def reference(library, tmp_path_factory):
    """An uninterrupted in-process run: 12 examples in 3 shards."""
    tmp = tmp_path_factory.mktemp("ref")
    spec = make_spec(tmp, library)
    report = run_job(spec, workers=0, progress=False)
    return spec, report, arrays(tmp / "out" / "train")


def test_shard_contents_and_attributes(reference):
    spec, report, data = reference
    assert len(report.shards_written) == 3 and report.examples == 12 and report.images == 24
    assert sorted(data) == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    with h5py.File(spec.output / "train" / "shard-00000.h5", "r") as h:
        assert h["rest"].shape == (1, 256, 256, 4) and h["morphed"].shape == (4, 256, 256, 4)
        assert h["morphed"].chunks == (1, 256, 256, 4) and h.attrs["compression"] == "lz4"
        assert h["pose"].dtype == np.float32 and h["pose"].shape == (4, 6)
        assert h["light"].shape == (4, 2) and h["model"].dtype == np.int32
        attrs = dict(h.attrs)
        assert attrs["schema"] == "tha1" and list(attrs["parameter_names"]) == ["left_eye", "right_eye", "mouth", "head_x", "head_y", "neck_z"]
        assert attrs["split"] == "train" and attrs["shard_index"] == 0 and attrs["seed"] == 7
        assert "llvmpipe" in attrs["renderer"] or attrs["renderer"]
        assert json.loads(attrs["spec"])["shard_size"] == 4 and attrs["format_version"] == 1
    index = load_index(spec.output / "train")
    assert index["examples"] == 12 and [s["examples"] for s in index["shards"]] == [4, 4, 4]
    # Pixel facts: the background is exactly transparent; morphed and posed differ from rest.
    for shard in data.values():
        for images in (shard["rest"], shard["morphed"], shard["posed"]):
            corners = images[:, :8, :8]
            assert not corners.any()
            assert (images[..., 3] == 255).sum() > 5000 * len(images)
        # one model per shard: its lights are shared by the rest image and every example
        assert np.all(shard["light"] == shard["light"][0])


def test_examples_read_back_with_open_split(reference):
    spec, _, data = reference
    examples = open_split(spec.output, "train")
    assert len(examples) == 12
    ex = examples[5]
    np.testing.assert_array_equal(ex["posed"], data["shard-00001.h5"]["posed"][1])
    assert ex["pose"].shape == (6,) and ex["rest"].shape == (256, 256, 4)


def test_same_spec_same_arrays_with_workers(reference, library, tmp_path):
    spec = make_spec(tmp_path, library)
    run_job(spec, workers=2, progress=False)
    assert_same(reference[2], arrays(tmp_path / "out" / "train"))


def test_rerun_keeps_complete_shards_and_redoes_corrupt_ones(reference, library, tmp_path):
    spec = make_spec(tmp_path, library)
    run_job(spec, workers=0, progress=False)
    split = tmp_path / "out" / "train"
    victim = split / "shard-00001.h5"
    victim.write_bytes(victim.read_bytes()[:-1000])  # truncated
    (split / "shard-00002.h5").unlink()
    report = run_job(spec, workers=0, progress=False)
    assert [p.name for p in report.shards_written] == ["shard-00001.h5", "shard-00002.h5"]
    assert [p.name for p in report.shards_kept] == ["shard-00000.h5"]
    assert_same(reference[2], arrays(split))


def test_smaller_spec_drops_the_shards_beyond_its_plan(reference, library, tmp_path):
    spec, _, data = reference
    shutil.copytree(spec.output, tmp_path / "out")  # 12 examples in 3 shards
    smaller = make_spec(tmp_path, library, train=8)  # same output folder, 2 shards
    lines = []
    report = run_job(smaller, workers=0, progress=False, log=lines.append)
    split = tmp_path / "out" / "train"
    assert report.shards_written == [] and [p.name for p in report.shards_kept] == ["shard-00000.h5", "shard-00001.h5"]
    index = load_index(split)
    assert [s["file"] for s in index["shards"]] == ["shard-00000.h5", "shard-00001.h5"] and index["examples"] == 8
    assert not (split / "shard-00002.h5").exists()
    assert any("removed 1 shard(s)" in line and "shard-00002.h5" in line for line in lines)
    assert len(open_split(tmp_path / "out", "train")) == 8
    assert_same({k: data[k] for k in ("shard-00000.h5", "shard-00001.h5")}, arrays(split))


def test_node_split_union_equals_single_run(reference, library, tmp_path):
    spec = make_spec(tmp_path, library)
    a = run_job(spec, workers=0, node_index=0, num_nodes=2, progress=False)
    b = run_job(spec, workers=0, node_index=1, num_nodes=2, progress=False)
    assert {p.name for p in a.shards_written}.isdisjoint({p.name for p in b.shards_written})
    assert len(a.shards_written) + len(b.shards_written) == 3
    assert_same(reference[2], arrays(tmp_path / "out" / "train"))


def test_nodes_with_their_own_output_folders_merge_by_copying(reference, library, tmp_path):
    """Each node renders into its own folder; the shard files copied into one
    folder and one more run there adopt them (plan and images checked) and
    render nothing; a copied file that does not fit the plan is redone."""
    spec = make_spec(tmp_path, library)
    for node in (0, 1):
        run_job(spec, out_dir=tmp_path / f"node{node}", workers=0, node_index=node, num_nodes=2, progress=False)
    merged = tmp_path / "merged" / "train"
    merged.mkdir(parents=True)
    for node in (0, 1):
        for f in (tmp_path / f"node{node}" / "train").glob("shard-*.h5"):
            shutil.copy2(f, merged / f.name)
    lines = []
    report = run_job(spec, out_dir=tmp_path / "merged", workers=0, progress=False, log=lines.append)
    assert report.shards_written == [] and len(report.shards_adopted) == 3
    assert "adopted 3 shard file(s) that index.json did not list (plan and images checked)" in lines
    assert_same(reference[2], arrays(merged))
    assert len(load_index(merged)["shards"]) == 3
    # a stranger under a planned name (another spec's shard) is not adopted: it is rendered again
    other_toml = tmp_path / "other.toml"
    other_toml.write_text(SPEC.format(library=library, output=tmp_path / "other", shard_size=4, train=12)
                          .replace("seed = 7", "seed = 8"), encoding="utf-8")
    other = load_spec(other_toml)
    run_job(other, workers=0, progress=False)
    (merged / "index.json").unlink()
    shutil.copy2(other.output / "train" / "shard-00000.h5", merged / "shard-00000.h5")
    report = run_job(spec, out_dir=tmp_path / "merged", workers=0, progress=False)
    assert [p.name for p in report.shards_written] == ["shard-00000.h5"] and len(report.shards_adopted) == 2
    assert_same(reference[2], arrays(merged))


def test_killed_run_resumes_to_the_same_arrays(reference, library, tmp_path):
    spec_path = tmp_path / "kill.toml"
    spec_path.write_text(SPEC.format(library=library, output=tmp_path / "out", shard_size=4, train=12), encoding="utf-8")
    split = tmp_path / "out" / "train"
    proc = subprocess.Popen([sys.executable, "-m", "mmdsynth", "render", str(spec_path), "--workers", "2", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if split.is_dir() and (list(split.glob(".shard-*.tmp")) or list(split.glob("shard-*.h5"))):
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the main process and its render workers
        proc.wait()
    finished = len(load_index(split)["shards"]) if split.is_dir() else 0
    assert finished < 3, "the run ended before it could be killed"
    report = run_job(load_spec(spec_path), workers=0, progress=False)
    assert len(report.shards_written) == 3 - finished
    assert_same(reference[2], arrays(split))
    assert not list(split.glob(".shard-*.tmp"))


def library_with_twins(tmp_path: Path, *names: str) -> tuple[Path, dict[str, str]]:
    """A library of the example character plus copies of it named ``names``
    (other bytes, so other catalog entries); returns (library, model id by name)."""
    lib = tmp_path / "library"
    src = write_example(tmp_path / "src" / "example")
    files = [src]
    for name in names:
        twin = build_example_model()
        twin.name = name
        files.append(src.parent / f"{name}.pmx")
        save_pmx(twin, files[-1])
    assert main(["add", str(lib), *map(str, files), "--group", "g"]) == 0
    with Catalog.open(lib) as cat:
        return lib, {r.name: r.id for r in cat.models()}


def test_broken_model_is_recorded_and_the_run_goes_on(library, tmp_path):
    lib, ids = library_with_twins(tmp_path, "twin")
    twin_id = ids["twin"]
    with Catalog.open(lib) as cat:
        broken = cat.model_path(twin_id)
    broken.write_bytes(broken.read_bytes()[:5000])  # the file breaks after it was catalogued
    spec = make_spec(tmp_path, lib, train=8)
    report = run_job(spec, workers=0, progress=False)
    assert twin_id in report.failed and "MMDFormatError" in report.failed[twin_id]
    index = load_index(spec.output / "train")
    assert [f["model_id"] for f in index["failed"]] == [twin_id]
    assert index["examples"] == 8
    examples = open_split(spec.output, "train")
    assert {examples[i]["model_id"] for i in range(len(examples))} != {twin_id}
    assert all(examples[i]["model_id"] != twin_id for i in range(len(examples)))


def crash_or_hang(unit):
    """Test hook for the render workers (module level: picklable): the model
    named "crash" kills its worker, "hang" never returns, others render."""
    if unit.model.name == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if unit.model.name == "hang":
        time.sleep(3600)
    return render_unit(unit)


def short_limit(unit):
    return 5.0 if unit.model.name == "hang" else unit_time_limit(unit)


def test_a_crashing_or_hanging_worker_fails_only_its_model(tmp_path):
    lib, ids = library_with_twins(tmp_path, "crash", "hang")
    spec = make_spec(tmp_path, lib, train=6, shard_size=3)
    report = run_job(spec, workers=2, progress=False, render_fn=crash_or_hang, time_limit=short_limit)
    assert set(report.failed) == {ids["crash"], ids["hang"]}
    assert "killed by SIGKILL" in report.failed[ids["crash"]] and "timed out after 5 s" in report.failed[ids["hang"]]
    index = load_index(spec.output / "train")
    assert index["examples"] == 6 and {f["model_id"] for f in index["failed"]} == {ids["crash"], ids["hang"]}
    examples = open_split(spec.output, "train")
    survivors = {model_id for name, model_id in ids.items() if name not in ("crash", "hang")}
    assert {examples[i]["model_id"] for i in range(len(examples))} == survivors


def test_models_that_are_not_ok_are_named_not_silently_dropped(tmp_path):
    lib, ids = library_with_twins(tmp_path, "twin")
    twin_id = ids["twin"]
    with Catalog.open(lib) as cat:
        cat.set_status(twin_id, "duplicate", "same geometry as the example")
    lines = []
    spec = make_spec(tmp_path, lib, train=4)
    run_job(spec, workers=0, progress=False, log=lines.append)
    assert any(line.startswith("not rendered: 1 duplicate model(s) of the library") for line in lines)
    listed = load_spec(write_spec_file(tmp_path, lib, f'ids = ["{twin_id[:10]}"]'))
    with pytest.raises(PlanError, match=rf"split train: model '{twin_id[:10]}' \(twin\) has status duplicate "
                                        r"\(same geometry as the example\); only models with status ok are rendered"):
        run_job(listed, workers=0, progress=False, log=lines.append)


def write_spec_file(tmp_path: Path, library: Path, selection: str) -> Path:
    path = tmp_path / "ids.toml"
    path.write_text(f'library = "{library}"\noutput = "{tmp_path / "ids-out"}"\n'
                    f"[splits.train]\nexamples = 2\n{selection}\n", encoding="utf-8")
    return path


def test_report_counts_only_examples_written(tmp_path):
    """A model that fails after another model of its shard was rendered: the
    dropped shard attempt's images are not counted as output."""
    lib, _ = library_with_twins(tmp_path, "twin")
    spec = make_spec(tmp_path, lib, train=8)
    with Catalog.open(lib) as cat:
        second = plan_all(spec, catalog_records(cat))["train"].shards[0].models[1]  # rendered after models[0]
    victim = lib / second.path
    victim.write_bytes(victim.read_bytes()[:5000])
    report = run_job(spec, workers=0, progress=False)
    assert list(report.failed) == [second.model_id]
    assert (report.examples, report.images) == (8, 16)
    assert load_index(spec.output / "train")["examples"] == 8


def test_cli_render_and_view(library, tmp_path, capsys):
    spec = tmp_path / "cli.toml"
    spec.write_text(SPEC.format(library=library, output=tmp_path / "out", shard_size=8, train=6), encoding="utf-8")
    assert main(["render", str(spec), "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "shards written: 1" in out and "examples rendered: 6" in out
    sheet = tmp_path / "sheet.png"
    assert main(["view", str(tmp_path / "out"), "--out", str(sheet), "--n", "4"]) == 0
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.mode in ("RGB", "RGBA") and im.width > 3 * 256 and im.height > 4 * 256


def test_cli_render_bad_spec_is_one_line(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text('library = "nowhere"\nsurprise = 1\n[splits.train]\nexamples = 1\nmodels = "all"\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "mmdsynth", "render", str(spec)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmdsynth render: error:") and "Traceback" not in proc.stderr


def test_bundled_demo_job(tmp_path, capsys):
    """The steps of `make demo`, with the repository's examples/tha1-demo.toml
    (copied so its relative paths land in tmp_path/demo-out)."""
    from conftest import ROOT

    (tmp_path / "examples").mkdir()
    spec = tmp_path / "examples" / "tha1-demo.toml"
    spec.write_text((ROOT / "examples" / "tha1-demo.toml").read_text(encoding="utf-8"), encoding="utf-8")
    demo = tmp_path / "demo-out"
    assert main(["example", str(demo / "example")]) == 0
    assert main(["add", str(demo / "library"), str(demo / "example")]) == 0
    assert main(["render", str(spec), "--no-progress"]) == 0
    sheet = demo / "tha1-demo" / "train-sheet.png"
    assert main(["view", str(demo / "tha1-demo"), "--split", "train", "--n", "12", "--out", str(sheet)]) == 0
    assert sheet.is_file()
    for split, n in (("train", 200), ("val", 40)):
        assert load_index(demo / "tha1-demo" / split)["examples"] == n
