"""The trainer end to end on a small dataset of the example character: data,
config, training (the loss goes down), exact resume, the three networks,
--eval, infer, DDP with two gloo processes, the bench hook."""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mmdsynth.cli import main as cli_main  # noqa: E402
from mmdsynth.datasets.job import run_job  # noqa: E402
from mmdsynth.datasets.shards import open_split  # noqa: E402
from mmdsynth.datasets.spec import load_spec  # noqa: E402
from mmdsynth.errors import UserError  # noqa: E402
from mmdsynth.mmd.example import write_example  # noqa: E402
from mmdsynth.train.checkpoint import load_checkpoint  # noqa: E402
from mmdsynth.train.config import ConfigError, load_config, parse_config  # noqa: E402
from mmdsynth.train.data import (  # noqa: E402
    ShardDataset,
    StepBatchSampler,
    eval_batches,
    make_loader,
    to_float,
    to_uint8,
)
from mmdsynth.train.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

SPEC = """
library = "{library}"
output = "{output}"
seed = 11
shard_size = 8

[splits.train]
examples = 24
models = "all"

[splits.val]
examples = 8
models = "all"
"""


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """24 train + 8 val examples of the example character in shards of 8."""
    root = tmp_path_factory.mktemp("train-data")
    example = write_example(root / "src" / "example")
    lib = root / "library"
    assert cli_main(["add", str(lib), str(example)]) == 0
    spec_path = root / "spec.toml"
    spec_path.write_text(SPEC.format(library=lib, output=root / "data"), encoding="utf-8")
    run_job(load_spec(spec_path), workers=0, progress=False, log=lambda line: None)
    return root / "data"


def config(dataset: Path, out: Path, network: str = "morpher", **over) -> dict:
    """A tiny, fast config dict (workers 0, no progress bar)."""
    cfg = {
        "network": network, "out": str(out), "seed": 3, "device": "cpu",
        "data": {"dir": str(dataset), "batch_size": 2, "workers": 0, "val_examples": 4},
        "model": {"preset": "tiny"},
        "train": {"steps": 6, "lr": 1e-3},
        "log": {"log_every": 1, "val_every": 0, "checkpoint_every": 0, "grid_examples": 2, "progress": False,
                "tensorboard": False},
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return cfg


def train(dataset, out, network="morpher", resume=None, until=None, **over):
    trainer = Trainer(parse_config(config(dataset, out, network, **over)), resume=resume, log=lambda line: None)
    try:
        return trainer.fit(until)
    finally:
        trainer.close()


def cli(*argv: str) -> int:
    from mmdsynth import train_cmd

    parser = argparse.ArgumentParser(prog="mmdsynth")
    sub = parser.add_subparsers(dest="command")
    train_cmd.register(sub)
    args = parser.parse_args(list(argv))
    return args.func(args)


def read_log(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ============================================================================= data


def test_dataset_reads_what_open_split_reads(dataset):
    ds = ShardDataset(dataset, "train")
    ref = open_split(dataset, "train")
    assert len(ds) == 24 and ds.parameter_names[:3] == ["left_eye", "right_eye", "mouth"]
    idx = [0, 9, 23, 5]
    batch = ds[idx]
    assert batch["morphed"].dtype == torch.uint8 and batch["morphed"].shape == (4, 256, 256, 4)
    for j, i in enumerate(idx):
        ex = ref[i]
        for kind in ("rest", "morphed", "posed"):
            np.testing.assert_array_equal(batch[kind][j].numpy(), ex[kind])
        np.testing.assert_array_equal(batch["pose"][j].numpy(), ex["pose"])
    item = ds[9]
    assert item["posed"].dtype == torch.float32 and item["posed"].shape == (4, 256, 256)
    assert item["posed"].min() >= -1 and item["posed"].max() <= 1
    assert torch.equal(to_uint8(item["posed"]), batch["posed"][1])
    # only the asked-for image kinds are read
    assert set(ShardDataset(dataset, "train", images=("morphed",))[[0]]) == {"morphed", "pose", "index"}
    with pytest.raises(IndexError):
        ds[[24]]


def test_to_float_range():
    u = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 1, 3, 1).expand(1, 1, 3, 4).contiguous()
    x = to_float(u)
    assert x.shape == (1, 4, 1, 3)
    assert x[0, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6)
    with pytest.raises(TypeError):
        to_float(x)


def test_sampler_order_resume_and_ranks():
    full = list(StepBatchSampler(10, 3, seed=5, total_steps=7))
    assert len(full) == 7 and all(len(b) == 3 for b in full)
    assert sorted(sum(full[:3], [])) != list(range(9))[:0]  # three batches of an epoch: no repeats
    assert len(set(sum(full[:3], []))) == 9
    assert full[3:] == list(StepBatchSampler(10, 3, seed=5, start_step=3, total_steps=7))
    assert full[:3] != full[3:6]  # a new permutation each epoch
    r0 = list(StepBatchSampler(10, 2, seed=5, rank=0, world_size=2, total_steps=2))
    r1 = list(StepBatchSampler(10, 2, seed=5, rank=1, world_size=2, total_steps=2))
    assert not set(sum(r0, [])) & set(sum(r1, []))
    with pytest.raises(ValueError, match="fewer than one batch"):
        StepBatchSampler(3, 4)


def test_loader_with_workers_delivers_the_sampler_order(dataset):
    ds = ShardDataset(dataset, "train", images=("rest", "morphed"))
    batches = list(StepBatchSampler(len(ds), 4, seed=1, total_steps=9))
    got = list(make_loader(ds, batches, 4, workers=2, prefetch_factor=2))
    assert [b["index"].tolist() for b in got] == batches
    for b in got[::4]:
        direct = ds[b["index"].tolist()]
        assert torch.equal(b["rest"], direct["rest"]) and torch.equal(b["morphed"], direct["morphed"])
    ev = eval_batches(len(ds), 5)
    assert sum(ev, []) == list(range(24)) and [len(b) for b in ev] == [5, 5, 5, 5, 4]


def test_pinned_batches_are_private_copies(dataset, monkeypatch):
    """With pin_memory (the trainer's choice on CUDA) every tensor of a batch goes
    through Tensor.pin_memory, so no batch aliases the workers' shared pool.
    This CPU build cannot pin: pin_memory is replaced by a recording copy."""
    pinned = []

    def fake_pin(t):
        copy = t.clone()
        pinned.append(copy.data_ptr())
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda t: t.data_ptr() in pinned)
    ds = ShardDataset(dataset, "train", images=("rest", "morphed"))
    batches = list(StepBatchSampler(len(ds), 4, seed=1, total_steps=3))
    for workers in (0, 2):
        got = list(make_loader(ds, batches, 4, workers=workers, copy=False, pin_memory=True))
        assert [b["index"].tolist() for b in got] == batches
        for b in got:
            assert all(v.data_ptr() in pinned for v in b.values() if isinstance(v, torch.Tensor))
        assert len({b["rest"].data_ptr() for b in got}) == len(got)  # not the same pool slot twice
        assert torch.equal(got[0]["morphed"], ds[batches[0]]["morphed"])


# ============================================================================= config


def test_example_configs_parse():
    for path in sorted((ROOT / "examples").glob("train-*.toml")):
        load_config(path)
    cfg = load_config(ROOT / "examples" / "train-morpher-tiny.toml")
    assert cfg.network == "morpher" and cfg.model["preset"] == "tiny"
    assert cfg.train.lr == 1e-4 and cfg.train.betas == [0.5, 0.999]
    assert Path(cfg.data.dir).is_absolute()


def test_config_errors(tmp_path, dataset):
    bad = [
        ({"network": "poser"}, "network must be"),
        ({"data__batchsize": 3}, "unknown key batchsize"),
        ({"train": {"steps": 3, "epochs": 1}}, "exactly one of"),
        ({"train__lr": -1.0}, "lr must be"),
        ({"train__scheduler": "step"}, "step_size"),
        ({"model__width": 4}, "unknown model key"),
        ({"log__val_every": "often"}, "must be an integer"),
    ]
    for over, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_config(config(dataset, tmp_path, **over))
    with pytest.raises(ConfigError, match="train.rotator"):
        parse_config(config(dataset, tmp_path, "combiner"))
    (tmp_path / "c.toml").write_text("network = [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "c.toml")


# ============================================================================= training


def test_tiny_morpher_learns(dataset, tmp_path):
    history = train(dataset, tmp_path / "run", train__steps=32, data__val_examples=4, log__val_every=16,
                    log__checkpoint_every=16, log__log_every=8)
    losses = [loss for _, loss in history]
    assert len(losses) == 32 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    rows = read_log(tmp_path / "run" / "log.csv")
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    assert [int(r["step"]) for r in train_rows] == [8, 16, 24, 32]
    assert [int(r["step"]) for r in val_rows] == [16, 32] and val_rows[0]["output"] == "output"
    assert float(val_rows[1]["l1"]) < float(val_rows[0]["l1"])
    for r in val_rows:
        assert 0 <= float(r["ssim"]) <= 1 and float(r["psnr"]) > 0 and float(r["rmse"]) >= float(r["l1"])
    assert sorted(p.name for p in (tmp_path / "run" / "grids").iterdir()) == ["step-0000016.png", "step-0000032.png"]
    from PIL import Image

    with Image.open(tmp_path / "run" / "grids" / "step-0000032.png") as im:
        assert im.width == 3 * 256 and im.height > 2 * 256  # input | output | target, two rows
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 32 and ckpt["examples"] == 64 and ckpt["network"] == "morpher"
    assert ckpt["pose_names"] == ["left_eye", "right_eye", "mouth"]
    assert ckpt["metrics"]["output"]["examples"] == 4
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps == ["step-0000016.pt", "step-0000032.pt"]
    assert not [p for p in (tmp_path / "run").rglob("*.tmp")]


def test_perceptual_term_from_local_weights_trains(dataset, tmp_path):
    """train.perceptual_weights (a local file, nothing downloaded) adds the VGG16 term to the loss."""
    from test_train_metrics import _fake_vgg16

    weights = _fake_vgg16(tmp_path / "vgg16.pth")
    plain = train(dataset, tmp_path / "plain", train__steps=2, data__val_examples=0, log__val_every=0)
    both = train(dataset, tmp_path / "both", train__steps=2, data__val_examples=0, log__val_every=0,
                 train__perceptual_weights=str(weights), train__perceptual_weight=0.5)
    only = train(dataset, tmp_path / "only", train__steps=2, data__val_examples=0, log__val_every=0,
                 train__perceptual_weights=str(weights), train__l1_weight=0.0)
    assert all(np.isfinite(loss) and loss > 0 for _, loss in both + only)
    # same seed, same first batch: the first loss is the L1 term plus half the perceptual term
    assert both[0][1] == pytest.approx(plain[0][1] + 0.5 * only[0][1], rel=1e-4)


def test_resume_gives_the_same_losses(dataset, tmp_path):
    # 8 examples at batch 2: 4 steps an epoch, so the run crosses an epoch boundary
    over = dict(data__train_examples=8, train__steps=7, train__scheduler="cosine", train__warmup_steps=2,
                train__grad_clip=0.5)
    full = train(dataset, tmp_path / "full", **over)
    first = train(dataset, tmp_path / "part", until=3, **over)  # stopped after step 3 of 7
    second = train(dataset, tmp_path / "part", resume=tmp_path / "part" / "last.pt", **over)
    assert [s for s, _ in first + second] == list(range(1, 8))
    assert first + second == full  # exactly the same floats
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = read_log(tmp_path / "part" / "log.csv")
    assert [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == "train"] == full
    # a run that died after logging past its last checkpoint: the resumed run replaces those rows
    train(dataset, tmp_path / "part", resume=tmp_path / "part" / "checkpoints" / "step-0000003.pt", **over)
    rows = read_log(tmp_path / "part" / "log.csv")
    assert [int(r["step"]) for r in rows if r["split"] == "train"] == list(range(1, 8))
    # resuming with a different batch size is refused
    with pytest.raises(ConfigError, match="batch_size"):
        train(dataset, tmp_path / "part", resume=tmp_path / "part" / "last.pt", **{**over, "data__batch_size": 4})


def test_rotator_combiner_eval_and_infer(dataset, tmp_path, capsys):
    train(dataset, tmp_path / "morpher", train__steps=2)
    train(dataset, tmp_path / "rotator", "rotator", train__steps=2, log__val_every=2)
    rows = [r for r in read_log(tmp_path / "rotator" / "log.csv") if r["split"] == "val"]
    assert sorted(r["output"] for r in rows) == ["direct", "flow"]  # validated once, at step 2 (the end)
    train(dataset, tmp_path / "combiner", "combiner", train__steps=2,
          train__rotator=str(tmp_path / "rotator" / "last.pt"))
    ckpt = load_checkpoint(tmp_path / "combiner" / "last.pt")
    assert ckpt["rotator"]["network"] == "rotator"

    capsys.readouterr()
    assert cli("train", "--eval", str(tmp_path / "combiner" / "last.pt"), "--split", "val", "--workers", "0",
               "--device", "cpu") == 0
    out = capsys.readouterr().out
    assert "output" in out and "ssim" in out
    with pytest.raises(UserError, match="no such split"):
        cli("train", "--eval", str(tmp_path / "combiner" / "last.pt"), "--split", "test", "--workers", "0")

    from PIL import Image

    image = open_split(dataset, "val")[0]["rest"]
    Image.fromarray(image).save(tmp_path / "in.png")
    out_png = tmp_path / "out" / "posed.png"
    assert cli("infer", str(tmp_path / "morpher" / "last.pt"), str(tmp_path / "in.png"), "--pose",
               "left_eye=1,mouth=0.5,head_y=0.6", "--combiner", str(tmp_path / "combiner" / "last.pt"),
               "--out", str(out_png)) == 0
    with Image.open(out_png) as im:
        assert im.mode == "RGBA" and im.size == (256, 256)
    assert cli("infer", str(tmp_path / "morpher" / "last.pt"), str(tmp_path / "in.png"), "--pose", "mouth=1",
               "--out", str(tmp_path / "m.png")) == 0

    # THA1 input rules and other bad input: one-line errors
    Image.fromarray(image[..., :3]).save(tmp_path / "rgb.png")
    Image.fromarray(image).resize((128, 128)).save(tmp_path / "small.png")
    opaque = image.copy()
    opaque[..., 3] = 255
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    morpher = str(tmp_path / "morpher" / "last.pt")
    cases = [
        ((morpher, str(tmp_path / "rgb.png")), "no alpha channel"),
        ((morpher, str(tmp_path / "small.png")), "128x128"),
        ((morpher, str(tmp_path / "opaque.png")), "no pixel is transparent"),
        ((morpher, str(tmp_path / "in.png"), "--pose", "head_y=0.5"), "needs the rotator"),
        ((morpher, str(tmp_path / "in.png"), "--pose", "mouth=2"), "outside"),
        ((morpher, str(tmp_path / "in.png"), "--pose", "brow=1"), "unknown pose parameter"),
        ((str(tmp_path / "in.png"), str(tmp_path / "in.png")), "not a readable mmdsynth checkpoint"),
        ((str(tmp_path / "rotator" / "last.pt"), str(tmp_path / "in.png")), "must be a morpher"),
    ]
    for argv, message in cases:
        with pytest.raises(UserError, match=message):
            cli("infer", *argv, "--out", str(tmp_path / "x.png"))


def test_cli_train_refuses_to_overwrite_and_resumes(dataset, tmp_path, capsys):
    import tomllib  # noqa: F401 - the config is TOML

    cfg_path = tmp_path / "run.toml"
    cfg_path.write_text(
        f'network = "morpher"\nout = "out"\ndevice = "cpu"\n'
        f'[data]\ndir = "{dataset}"\nbatch_size = 2\nworkers = 0\nval = ""\n'
        f'[model]\npreset = "tiny"\n[train]\nsteps = 2\n[log]\nprogress = false\ntensorboard = false\n',
        encoding="utf-8")
    assert cli("train", str(cfg_path)) == 0
    assert (tmp_path / "out" / "last.pt").is_file()
    with pytest.raises(UserError, match="already holds a run"):
        cli("train", str(cfg_path))
    text = cfg_path.read_text(encoding="utf-8").replace("steps = 2", "steps = 3")
    cfg_path.write_text(text, encoding="utf-8")
    assert cli("train", str(cfg_path), "--resume") == 0
    assert load_checkpoint(tmp_path / "out" / "last.pt")["step"] == 3
    with pytest.raises(UserError, match="no such config"):
        cli("train", str(tmp_path / "missing.toml"))
    with pytest.raises(UserError, match="give a CONFIG"):
        cli("train")


def test_ddp_two_gloo_processes(dataset, tmp_path):
    """torchrun with two CPU processes: rank 0 writes, the examples are split,
    and the first logged loss is the mean over both processes' batches."""
    cfg = tmp_path / "ddp.toml"
    cfg.write_text(
        f'network = "morpher"\nout = "out"\nseed = 4\ndevice = "cpu"\n'
        f'[data]\ndir = "{dataset}"\nbatch_size = 2\nworkers = 0\nval_examples = 4\n'
        f'[model]\npreset = "tiny"\n[train]\nsteps = 4\nlr = 1e-3\n'
        f'[log]\nlog_every = 1\nval_every = 2\ncheckpoint_every = 2\ngrid_examples = 2\nprogress = false\n'
        f'tensorboard = false\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mmdsynth.train", str(cfg)],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_log(tmp_path / "out" / "log.csv")
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [int(r["examples"]) for r in train_rows] == [4, 8, 12, 16]
    assert [r["output"] for r in rows if r["split"] == "val"] == ["output", "output"]
    ckpt = load_checkpoint(tmp_path / "out" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 4 and ckpt["metrics"]["output"]["examples"] == 4

    # the first step's loss, recomputed in this process from the same initial weights
    from mmdsynth.train.data import TASK_POSE
    from mmdsynth.train.models import FaceMorpher, model_config

    torch.manual_seed(4)
    net = FaceMorpher(model_config("tiny"))
    ds = ShardDataset(dataset, "train", images=("rest", "morphed"))
    losses = []
    for rank in (0, 1):
        (idx,) = list(StepBatchSampler(len(ds), 2, seed=4, rank=rank, world_size=2, total_steps=1))
        b = ds[idx]
        with torch.no_grad():
            out = net(to_float(b["rest"]), b["pose"][:, :len(TASK_POSE["morpher"])])["image"]
        losses.append(torch.nn.functional.l1_loss(out, to_float(b["morphed"])).item())
    assert float(train_rows[0]["loss"]) == pytest.approx(np.mean(losses), rel=1e-5)


def test_bench_hook_runs(dataset):
    from mmdsynth.train.bench import bench_loader, bench_step

    r = bench_loader(dataset, "train", "morpher", workers=1, batch_size=4, seconds=0.3, warmup_batches=1)
    assert r["examples_per_s"] > 0 and r["images"] == ["rest", "morphed"]
    s = bench_step("combiner", "tiny", batch_size=1, steps=1, warmup=0)
    assert s["step_s"] > 0 and s["device"] == "cpu"
