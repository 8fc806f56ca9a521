"""``mmdsynth bench train``: data loading rate and training step time, measured in one run.

* :func:`bench_loader`: examples per second delivered by :func:`~mmdsynth.train.data.make_loader`
  (shuffled training order, the default workers), for the image kinds of one
  network (morpher: rest + morphed, of which rest is decoded once per model;
  rotator/combiner: morphed + posed), as uint8 batches in the main process,
  and also with the conversion to float [-1, 1] on the CPU (what a CPU
  training step adds).
* :func:`bench_step`: median wall time of one training step (forward, L1
  loss, backward, Adam) of a network on synthetic inputs of the right shape,
  on the CPU and, when available, on CUDA (with AMP like the trainer).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from mmdsynth.train.data import ShardDataset, StepBatchSampler, default_workers, make_loader, to_float
from mmdsynth.train.models import build_network, count_parameters, model_config

__all__ = ["bench_loader", "bench_step", "render_bench_dataset", "run_bench", "format_bench"]


def bench_loader(root: str | os.PathLike, split: str = "train", network: str = "morpher", workers: int | None = None,
                 batch_size: int = 32, seconds: float = 5.0, warmup_batches: int = 10) -> dict:
    """Loader rate over ``root/split`` for ``network``'s image kinds.

    Returns ``{"examples_per_s" (uint8 batches), "examples_per_s_float" (plus
    :func:`to_float` on the CPU), "workers", "batch_size", "images", "dataset_examples"}``."""
    images = ("rest", "morphed") if network == "morpher" else ("morphed", "posed")
    ds = ShardDataset(root, split, images=images)
    workers = default_workers() if workers is None else workers

    def rate(convert: bool) -> float:
        sampler = StepBatchSampler(len(ds), batch_size, seed=1)
        loader = make_loader(ds, sampler, batch_size, workers=workers, copy=False)
        it = iter(loader)
        for _ in range(warmup_batches):
            next(it)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            b = next(it)
            if convert:
                for k in images:
                    to_float(b[k])
            n += len(b["index"])
        r = n / (time.perf_counter() - start)
        del it
        return r

    return {"examples_per_s": rate(False), "examples_per_s_float": rate(True), "workers": workers,
            "batch_size": batch_size, "images": list(images), "dataset_examples": len(ds)}


def bench_step(network: str = "morpher", preset: str = "tha1", batch_size: int = 4, steps: int = 3,
               device: str = "cpu", warmup: int = 1) -> dict:
    """Median seconds per training step of ``network`` at ``preset`` size.

    Returns ``{"network", "preset", "parameters", "device", "batch_size",
    "step_s", "examples_per_s", "amp"}``."""
    dev = torch.device(device)
    torch.manual_seed(0)
    cfg = model_config(preset)
    net = build_network(network, cfg).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.5, 0.999))
    s = cfg.image_size
    x = torch.rand(batch_size, 4, s, s, device=dev) * 2 - 1
    y = torch.rand(batch_size, 4, s, s, device=dev) * 2 - 1
    p = torch.rand(batch_size, cfg.pose_size, device=dev)
    amp = None
    if dev.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def step():
        ctx = torch.autocast("cuda", dtype=amp) if amp is not None else torch.autocast("cpu", enabled=False)
        with ctx:
            out = net(x, x, p) if network == "combiner" else net(x, p)
        img = out["image"] if "image" in out else out["direct"]
        loss = (img.float() - y).abs().mean()
        if network == "rotator":
            loss = loss + (out["flow_image"].float() - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"network": network, "preset": preset, "parameters": count_parameters(net), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "batch_size": batch_size, "step_s": med,
            "examples_per_s": batch_size / med, "amp": str(amp).replace("torch.", "") if amp else "off"}


def render_bench_dataset(out: Path, examples: int = 400) -> Path:
    """Render a ``train`` split of ``examples`` examples of the bundled example
    character into ``out`` (library and shards); returns the dataset folder."""
    from mmdsynth.catalog_cmd import suggest_annotations
    from mmdsynth.datasets.catalog import Catalog
    from mmdsynth.datasets.job import run_job
    from mmdsynth.datasets.library import add_models
    from mmdsynth.datasets.spec import parse_spec
    from mmdsynth.mmd.example import write_example

    model = write_example(out / "example")
    lib = out / "library"
    with Catalog.open(lib, create=True) as cat:
        add_models(cat, [model], suggest=suggest_annotations, progress=False)
    spec = parse_spec({"library": str(lib), "output": str(out / "data"), "shard_size": 100,
                       "splits": {"train": {"examples": examples, "models": "all"}}}, base=out)
    run_job(spec, workers=0, progress=False, log=lambda line: None)
    return out / "data"


def run_bench(data: str | os.PathLike | None = None, examples: int = 400, workers: int | None = None,
              batch_size: int = 4, steps: int = 3) -> dict:
    """The whole ``mmdsynth bench train``: loader rates (morpher and rotator
    image kinds) on ``data`` (or a freshly rendered dataset of the example
    character), then the step time of the THA1-size face morpher on the CPU and
    on CUDA when available."""
    import tempfile

    import gc

    result: dict = {"cpu_count": default_workers()}
    # step times first, while no loader worker processes exist
    result["steps"] = [bench_step("morpher", "tha1", batch_size, steps, "cpu")]
    if torch.cuda.is_available():
        result["steps"].append(bench_step("morpher", "tha1", 25, max(steps, 10), "cuda", warmup=3))
    with tempfile.TemporaryDirectory(prefix="mmdsynth-bench-train-") as tmp:
        root = Path(data) if data is not None else render_bench_dataset(Path(tmp), examples)
        result["data"] = str(data) if data is not None else f"rendered: {examples} examples of the example character"
        result["loader"] = []
        for net in ("morpher", "rotator"):
            result["loader"].append(bench_loader(root, "train", net, workers))
            gc.collect()  # end the persistent workers of the last loader before the next measurement
    return result


def format_bench(r: dict) -> str:
    """Human-readable lines of :func:`run_bench`'s result."""
    lines = [f"data             {r['data']}"]
    for lo in r["loader"]:
        lines.append(f"loader {'+'.join(lo['images']):15s} {lo['examples_per_s']:8.0f} examples/s uint8 batches "
                     f"({lo['examples_per_s_float']:.0f}/s with float conversion on the CPU); "
                     f"{lo['workers']} workers, batch {lo['batch_size']}, {r['cpu_count']} cores")
    for s in r["steps"]:
        lines.append(f"step {s['network']} {s['preset']} ({s['parameters']:,} parameters) on {s['device_name']}: "
                     f"{s['step_s'] * 1000:9.1f} ms/step at batch {s['batch_size']} "
                     f"({s['examples_per_s']:.2f} examples/s; {s['threads']} threads; AMP {s['amp']})")
    return "\n".join(lines)
