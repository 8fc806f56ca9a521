"""Model-level commands: ``info``, ``example`` and ``pose``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmdsynth.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``info``, ``example`` and ``pose`` subcommands."""
    p = sub.add_parser("info", help="summarise a PMX/PMD model (counts, bones, morphs, textures, warnings)")
    p.add_argument("model", type=Path, help="a .pmx or .pmd file")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of text")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("example", help="write the bundled example character (PMX + textures) to OUTDIR")
    p.add_argument("outdir", type=Path)
    p.set_defaults(func=_cmd_example)

    p = sub.add_parser("pose", help="render one posed image of a model (schema tha1) to a PNG")
    p.add_argument("model", type=Path, help="a .pmx or .pmd file")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write (RGBA, straight alpha)")
    p.add_argument("--pose", default="", help='pose values, e.g. "left_eye=1,mouth=0.5,head_y=0.8" '
                   "(left_eye, right_eye, mouth in [0,1]; head_x, head_y, neck_z in [-1,1]; unnamed: 0)")
    p.add_argument("--rest", action="store_true", help="the rest pose (the default when --pose is not given)")
    p.add_argument("--preset", choices=["tha1", "tha3"], default="tha1", help="tha1 256x256 or tha3 512x512")
    p.add_argument("--head-top", type=float, default=None, help="head top, MMD Y units (default: suggested)")
    p.add_argument("--head-bottom", type=float, default=None, help="chin tip, MMD Y units (default: suggested)")
    p.add_argument("--ambient", type=float, default=0.5, help="ambient light magnitude (default 0.5)")
    p.add_argument("--directional", type=float, default=0.5, help="directional light magnitude (default 0.5)")
    p.set_defaults(func=_cmd_pose)


def _cmd_info(args: argparse.Namespace) -> int:
    from mmdsynth.info import format_summary, model_summary
    from mmdsynth.mmd.loader import load_model

    model = load_model(args.model)
    summary = model_summary(model)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        print(format_summary(summary, str(args.model)))
    return 0


def _cmd_example(args: argparse.Namespace) -> int:
    from mmdsynth.mmd.example import write_example

    path = write_example(args.outdir)
    print(path)
    return 0


def head_and_morphs(model, head_top: float | None = None, head_bottom: float | None = None, morphs: bool = True):
    """Framing inputs and morph assignment of ``model`` for rendering.

    Head bounds: ``head_top``/``head_bottom`` (MMD Y units) when both are
    given, else :func:`mmdsynth.annotate.suggest.suggest_head_bounds`; the
    centre X is the 頭 bone's rest X (0 without one). Morphs:
    :func:`mmdsynth.annotate.suggest.suggest_morphs` (an empty assignment when
    ``morphs`` is False: nothing to look for).

    Returns ``(top, bottom, center_x, assignment, notes)`` where ``notes`` are
    one-line remarks for stderr (what was suggested). Raises UserError when
    only one bound is given, the bounds are not ordered, or no bounds can be
    suggested (no head bone).
    """
    from mmdsynth.annotate.suggest import suggest_head_bounds, suggest_morphs
    from mmdsynth.mmd.schema import MorphAssignment

    notes: list[str] = []
    if (head_top is None) != (head_bottom is None):
        raise UserError("give both --head-top and --head-bottom, or neither (then they are suggested)")
    if head_top is None:
        try:
            hb = suggest_head_bounds(model)
        except ValueError as exc:
            raise UserError(f"cannot suggest head bounds ({exc}); pass --head-top and --head-bottom") from None
        top, bottom, center_x = hb.top, hb.bottom, hb.center_x
        notes.append(f"using suggested head bounds top={top:.4g} bottom={bottom:.4g} "
                     f"(confidence {hb.confidence:.2f}); pass --head-top/--head-bottom to override")
    else:
        top, bottom = float(head_top), float(head_bottom)
        if not top > bottom:
            raise UserError(f"--head-top ({top:g}) must be above --head-bottom ({bottom:g})")
        center_x = 0.0
        for bone in model.bones:
            if bone.name == "頭":
                center_x = float(bone.position[0])
                break
    assignment = MorphAssignment()
    if morphs:
        assignment = suggest_morphs(model).assignment
        shown = ", ".join(f"{slot}={name}" for slot, name in assignment.as_dict().items() if name is not None)
        notes.append(f"using suggested morphs: {shown or 'none found'}")
    return top, bottom, center_x, assignment, notes


def _cmd_pose(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from mmdsynth.mmd.atomic import atomic_path
    from mmdsynth.mmd.loader import load_model
    from mmdsynth.mmd.schema import THA1
    from mmdsynth.render import Framing, Lighting, ModelRenderer, RenderError

    if args.rest and args.pose:
        raise UserError("give --pose or --rest, not both")
    try:
        values = THA1.parse(args.pose or "")
        lighting = Lighting(ambient=args.ambient, directional=args.directional)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    model = load_model(args.model)
    uses_morphs = any(v != 0.0 and hasattr(p.target, "slot") for v, p in zip(values, THA1.parameters))
    top, bottom, center_x, assignment, notes = head_and_morphs(model, args.head_top, args.head_bottom, uses_morphs)
    for note in notes:
        print(f"mmdsynth pose: {note}", file=sys.stderr)
    applied = THA1.constrain(values, assignment)
    for i, param in enumerate(THA1.parameters):
        if applied[i] != 0.0 and hasattr(param.target, "slot"):
            only = np.zeros_like(applied)
            only[i] = applied[i]
            if not THA1.to_pose(only, assignment).morphs:
                print(f"mmdsynth pose: the model has no morph for {param.name}; ignored", file=sys.stderr)
    pose = THA1.to_pose(applied, assignment)
    try:
        framing = Framing.from_head(args.preset, top, bottom, center_x)
        with ModelRenderer(model, preset=args.preset) as renderer:
            image = renderer.render_pose(pose, framing, lighting)
    except RenderError as exc:
        raise UserError(f"cannot render: {exc}") from None
    except (KeyError, ValueError) as exc:
        raise UserError(f"cannot pose the model: {exc}") from None
    with atomic_path(args.out) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    shown = ",".join(f"{n}={v:g}" for n, v in zip(THA1.names, applied))
    print(f"{args.out}: {framing.width}x{framing.height} {args.preset}, pose {shown}")
    return 0
