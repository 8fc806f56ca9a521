"""``mmdsynth annotate heads|eyes|dups LIB``: the Qt annotation tools, and their benchmark.

    mmdsynth annotate heads LIB [--show needs-review|reviewed|unusable|all] [--model ID_PREFIX]
    mmdsynth annotate eyes LIB  [--show ...] [--model ID_PREFIX]
    mmdsynth annotate dups LIB  [--show needs-review|reviewed|all] [--model ID_PREFIX]

``dups`` reviews the duplicate groups of ``mmdsynth dedup``: its list holds
groups (needs review = some member undecided; reviewed = every member
decided), and ``--model`` starts at the group holding that model.

This module does not import Qt (only :mod:`mmdsynth.annotate` does); the
tools are imported when a command runs. Without PyQt5 (the ``gui`` extra) or
without a display the command says so in one line (exit 2).

:func:`bench_annotate` is ``mmdsynth bench annotate MODEL``: the time to open
a library of 10,000 catalog rows and to show the next model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["FILTER_CHOICES", "bench_annotate", "cmd_annotate", "cmd_bench_annotate", "format_bench_annotate",
           "register"]

#: ``--show`` values -> list filters of the tools
FILTER_CHOICES = {"needs-review": "needs review", "reviewed": "reviewed", "unusable": "unusable", "all": "all"}

_TOOLS = {
    "heads": ("head top / chin (head bottom) of each model, on front and side renders with a live tha1 crop",
              "mmdsynth.annotate.heads", "HeadsWindow"),
    "eyes": ("wink, smile-wink and mouth morphs of each model, on a grid of face close-ups",
             "mmdsynth.annotate.eyes", "EyesWindow"),
    "dups": ("duplicate groups found by mmdsynth dedup, members side by side: keep one, mark duplicates or "
             "split the group", "mmdsynth.annotate.dups", "DupsWindow"),
}

#: ``--show`` values of each tool (default: every key of FILTER_CHOICES) and what they list
_SHOW = {
    "dups": {"needs-review": "groups with an undecided member", "reviewed": "groups whose members are all decided",
             "all": "every group"},
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``annotate heads``, ``annotate eyes`` and ``annotate dups`` to ``subparsers``."""
    p = subparsers.add_parser(
        "annotate",
        help="Qt tools to review head bounds (heads), eye/mouth morphs (eyes) and duplicate groups (dups)",
        description=(
            "Review a library's annotations in a window: the suggestion is shown, Enter accepts it (saved "
            "at once as 'human'), a drag or a digit corrects it, U marks the model unusable, Ctrl+Z undoes, "
            "F1 lists every key. 'dups' shows each duplicate group side by side: K keeps the selected model "
            "and marks the others duplicates, S splits it off. Needs PyQt5 (pip install 'mmdsynth[gui]') and "
            "a display (or Xvfb)."
        ),
    )
    sub = p.add_subparsers(dest="tool", metavar="TOOL")
    sub.required = True
    for tool, (text, _, _) in _TOOLS.items():
        q = sub.add_parser(tool, help=text, description=f"{'Review' if tool in _SHOW else 'Annotate'} the {text}.")
        q.add_argument("library", type=Path, metavar="LIB", help="library folder (made by mmdsynth add)")
        if tool in _SHOW:
            q.add_argument("--show", choices=list(_SHOW[tool]), default="needs-review",
                           help="which groups the list starts with: " + "; ".join(
                               f"{k} = {v}" for k, v in _SHOW[tool].items()) + " (default: needs-review)")
            q.add_argument("--model", metavar="ID_PREFIX", help="start at the group holding this model "
                           "(id or unique id prefix)")
        else:
            q.add_argument("--show", choices=list(FILTER_CHOICES), default="needs-review",
                           help="which models the list starts with (default: needs-review = suggested or missing)")
            q.add_argument("--model", metavar="ID_PREFIX", help="start at this model (id or unique id prefix)")
        q.set_defaults(func=cmd_annotate, annotate_tool=tool)


def _user_error(message: str) -> Exception:
    from mmdsynth.errors import UserError

    return UserError(message)


def _check_gui(tool: str) -> None:
    try:
        import PyQt5.QtWidgets  # noqa: F401
    except ImportError as exc:
        raise _user_error(f"the annotation tools need PyQt5 ({exc}): pip install 'mmdsynth[gui]'") from None
    if sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise _user_error(
            "no display (DISPLAY is not set): run it in a desktop session, over ssh -X, or under Xvfb: "
            f"xvfb-run -a mmdsynth annotate {tool} LIB")
    from mmdsynth.annotate.app import platform_problem

    problem = platform_problem()
    if problem:
        raise _user_error(problem)


def cmd_annotate(args: argparse.Namespace) -> int:
    """Run ``mmdsynth annotate heads|eyes|dups``: opens the window, returns 0 when it is closed."""
    import importlib

    from mmdsynth.datasets.catalog import Catalog, CatalogError

    tool = args.annotate_tool
    _check_gui(tool)
    try:
        with Catalog.open(args.library) as catalog:
            if args.model:
                try:
                    catalog.resolve_id(args.model)
                except KeyError as exc:
                    raise _user_error(f"--model {args.model}: {exc.args[0]}") from None
    except CatalogError as exc:
        raise _user_error(str(exc)) from None
    _, module, cls = _TOOLS[tool]
    window_class = getattr(importlib.import_module(module), cls)
    from mmdsynth.annotate.app import run_tool

    return run_tool(window_class, args.library, FILTER_CHOICES[args.show], args.model)


def bench_annotate(model: Path, rows: int = 10000, variants: int = 4) -> dict:
    """``mmdsynth bench annotate MODEL``: speed of the annotation tools, measured in one run.

    Builds a temporary library with ``variants`` copies of ``model`` (each
    saved with a different comment, so they are distinct models) plus
    synthetic catalog rows up to ``rows`` in all, then on the offscreen Qt
    platform (unless a display is set) measures:

    * ``open_s``: opening the heads tool on the library (catalog open, list
      query, window built and shown), in this process; ``open_process_s``:
      the same from a fresh Python process's start (imports included).
    * ``next_s`` per tool: from pressing N to the next model's main views on
      screen and painted, the next model having been prefetched while the
      previous one was shown (median and max over the variants);
      ``cold_s``: the same without prefetching (first sight of a model).
    * ``ui_stall_ms``: the longest delay of a 10 ms UI timer while the worker
      loads and renders the next model (the window's responsiveness).

    Returns a dict of these figures (see :func:`format_bench_annotate`).
    Raises :class:`~mmdsynth.errors.UserError` without PyQt5 or a GL context.
    """
    try:
        import PyQt5.QtWidgets  # noqa: F401
    except ImportError as exc:
        raise _user_error(f"bench annotate needs PyQt5 ({exc}): pip install 'mmdsynth[gui]'") from None
    from mmdsynth.render import RenderError, renderer_string

    try:
        renderer_string()
    except RenderError as exc:
        raise _user_error(f"cannot render: {exc}") from None
    from mmdsynth.annotate.bench import run_bench

    return run_bench(Path(model), rows=rows, variants=variants)


def cmd_bench_annotate(args: argparse.Namespace) -> int:
    """``mmdsynth bench annotate MODEL [--rows N]`` (called by :mod:`mmdsynth.bench`):
    checks the arguments, runs :func:`bench_annotate` and prints its lines."""
    files = list(getattr(args, "files", []) or [])
    if len(files) != 1:
        raise _user_error("bench annotate needs exactly one model file (e.g. Gene_light.pmx)")
    model = Path(files[0])
    if not model.is_file():
        raise _user_error(f"{model}: no such file")
    rows = getattr(args, "rows", None) or 10000
    if rows < 1:
        raise _user_error(f"--rows {rows}: must be at least 1")
    print(format_bench_annotate(bench_annotate(model, rows=rows)))
    return 0


def format_bench_annotate(r: dict) -> str:
    """Human-readable lines of a :func:`bench_annotate` result."""
    lines = [
        f"library          {r['rows']:,} catalog rows ({r['variants']} x {Path(r['model']).name} + synthetic rows); "
        f"renderer {r['renderer']}",
        f"open (in process)     {r['open_s']:.3f} s   (catalog + list query {r['list_s'] * 1000:.0f} ms; target < 2 s)",
        f"open (new process)    {r['open_process_s']:.3f} s   (python start, imports, window shown)",
    ]
    for tool in ("heads", "eyes"):
        t = r[tool]
        lines.append(
            f"{tool:5s} next model      {t['next_median_s']:.3f} s median, {t['next_max_s']:.3f} s max "
            f"(prefetched; target < 0.3 s)  | cold {t['cold_s']:.3f} s  | UI stall while prefetching "
            f"{t['ui_stall_ms']:.0f} ms max")
        if tool == "eyes":
            lines.append(f"      whole grid ({t['tiles']} faces) rendered in {t['grid_s']:.2f} s cold")
    return "\n".join(lines)
