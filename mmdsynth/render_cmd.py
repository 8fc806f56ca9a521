"""``mmdsynth render SPEC.toml``: the main job (render a dataset into HDF5 shards)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmdsynth.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``render`` subcommand."""
    p = sub.add_parser("render", help="render the dataset a spec describes (rest/morphed/posed triples -> HDF5 shards)")
    p.add_argument("spec", type=Path, help="the render spec (TOML; see examples/tha1-demo.toml)")
    p.add_argument("--out", type=Path, default=None, help="dataset folder (default: the spec's `output`)")
    p.add_argument("--workers", type=int, default=None,
                   help="render processes, each with its own GL context (default: one per core; 0: in this process)")
    p.add_argument("--node-index", type=int, default=0, help="this machine's number, 0..num-nodes-1 (default 0)")
    p.add_argument("--num-nodes", type=int, default=1, help="machines sharing the job, no coordinator needed (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_render)


def _cmd_render(args: argparse.Namespace) -> int:
    from mmdsynth.datasets.catalog import CatalogError
    from mmdsynth.datasets.job import format_report, replace_output, run_job
    from mmdsynth.datasets.plan import PlanError
    from mmdsynth.datasets.shards import ShardError
    from mmdsynth.datasets.spec import SpecError, load_spec

    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    if not 0 <= args.node_index < max(args.num_nodes, 1) or args.num_nodes < 1:
        raise UserError(f"--node-index must be in [0, --num-nodes) and --num-nodes >= 1 (got {args.node_index}, {args.num_nodes})")
    try:
        spec = replace_output(load_spec(args.spec), args.out)
        report = run_job(spec, workers=args.workers, node_index=args.node_index, num_nodes=args.num_nodes,
                         progress=not args.no_progress)
    except (SpecError, PlanError, CatalogError, ShardError) as exc:
        raise UserError(str(exc)) from None
    print(format_report(report, spec.output))
    return 0
