"""``mmdsynth add`` and ``mmdsynth catalog``: build and inspect a library.

Handlers raise :class:`mmdsynth.errors.UserError` for bad input, so
``cli.main`` prints one line and exits with 2.

* ``mmdsynth add LIB MODEL_OR_DIR... [--group NAME] [--no-suggest]``
* ``mmdsynth catalog LIB [--json] [--status STATUS]``
* ``mmdsynth catalog export LIB OUT.json``
* ``mmdsynth catalog import LIB IN.json``

This module, not :mod:`mmdsynth.datasets`, imports the suggestion heuristics
(:mod:`mmdsynth.annotate.suggest`) and hands them to
:func:`mmdsynth.datasets.library.add_models` as a callable.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from pathlib import Path
from typing import Any

from mmdsynth.mmd.schema import EXPRESSION_SLOTS

CATALOG_USAGE = (
    "mmdsynth catalog LIB [--json] [--status STATUS]\n"
    "       mmdsynth catalog export LIB OUT.json\n"
    "       mmdsynth catalog import LIB IN.json"
)

#: exact keys of each ``mmdsynth catalog --json`` row
LISTING_KEYS = ("id", "name", "path", "group", "format", "status", "reason", "split",
                "vertices", "faces", "morphs", "head", "slots")


def _user_error(message: str) -> Exception:
    from mmdsynth.errors import UserError

    return UserError(message)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``add`` and ``catalog`` subcommands to ``subparsers`` (the
    action returned by ``parser.add_subparsers``)."""
    p = subparsers.add_parser(
        "add",
        help="copy models (and their textures) into a library and record them in its catalog",
        description=(
            "Copy each model file and the textures it references into LIB/models/<group>/<folder>/, "
            "load it, record it in LIB/catalog.sqlite and store automatic head/morph suggestions. "
            "LIB is created when it does not exist (or is an empty folder). Folders are searched "
            "recursively for .pmx/.pmd files. A model that fails to load is recorded with status "
            "'error'. Exit status: 0, or 1 when some models were recorded as errors."
        ),
    )
    p.add_argument("library", type=Path, metavar="LIB", help="library folder")
    p.add_argument("models", type=Path, nargs="+", metavar="MODEL_OR_DIR", help=".pmx/.pmd files or folders")
    p.add_argument("--group", metavar="NAME",
                   help="source group for every model (default: the name of the folder each model is in)")
    p.add_argument("--no-suggest", action="store_true", help="do not store automatic suggestions")
    p.set_defaults(func=cmd_add)

    p = subparsers.add_parser(
        "catalog",
        help="list a library's models and annotation state; export/import annotations",
        usage=CATALOG_USAGE,
        description=(
            "catalog LIB: one line per model (id prefix, status, group, head bounds and slot annotation "
            "state, name). catalog export LIB OUT.json: write all annotations. catalog import LIB IN.json: "
            "merge annotations by model id (human beats auto, the newer of two values of the same origin "
            "wins, models not in LIB are skipped)."
        ),
    )
    p.add_argument("args", nargs="+", metavar="ARG", help="LIB | export LIB OUT.json | import LIB IN.json")
    p.add_argument("--json", action="store_true", help="list as a JSON array (keys: " + ", ".join(LISTING_KEYS) + ")")
    p.add_argument("--status", metavar="STATUS", help="list only models with this status")
    p.set_defaults(func=cmd_catalog)


# ---------------------------------------------------------------------------
# Suggestions adapter
# ---------------------------------------------------------------------------


def suggest_annotations(model) -> dict[str, Any]:
    """Automatic annotations of a loaded model, for ``add_models(suggest=...)``.

    Returns ``{"head_top": float, "head_bottom": float, <slot>: morph name or
    None, ...}`` from :func:`mmdsynth.annotate.suggest.suggest_head_bounds`
    and :func:`~mmdsynth.annotate.suggest.suggest_morphs`. Each part is
    guarded: when one raises (e.g. no 頭 bone) or returns something unusable
    (non-finite or unordered bounds, a morph name the model does not have),
    its keys are left out, never the whole model. Never raises.
    """
    out: dict[str, Any] = {}
    try:
        from mmdsynth.annotate import suggest
    except Exception:  # noqa: BLE001 - suggestions are optional
        return out
    try:
        hb = suggest.suggest_head_bounds(model)
        top, bottom = float(hb.top), float(hb.bottom)
        if math.isfinite(top) and math.isfinite(bottom) and top > bottom:
            out["head_top"], out["head_bottom"] = top, bottom
    except Exception:  # noqa: BLE001
        pass
    try:
        assignment = suggest.suggest_morphs(model).assignment
        names = {m.name for m in model.morphs}
        for slot in EXPRESSION_SLOTS:
            value = assignment.get(slot)
            if value is None or (isinstance(value, str) and value in names):
                out[slot] = value
    except Exception:  # noqa: BLE001
        pass
    return out


def suggester(command: str):
    """:func:`suggest_annotations` (picklable, for workers), or None with a
    one-line warning naming ``command`` when the suggestion heuristics cannot
    be imported: models are then recorded without suggestions."""
    try:
        import mmdsynth.annotate.suggest  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means no suggestions, not a crash
        print(f"mmdsynth {command}: warning: suggestions unavailable ({type(exc).__name__}: {exc}); "
              "models are recorded without them", file=sys.stderr)
        return None
    return suggest_annotations


# ---------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------


def _open(library: Path, create: bool = False):
    from mmdsynth.datasets.catalog import Catalog, CatalogError

    try:
        return Catalog.open(library, create=create)
    except CatalogError as exc:
        raise _user_error(str(exc)) from None


def cmd_add(args: argparse.Namespace) -> int:
    """``mmdsynth add``: returns 0, or 1 when some models were recorded as errors."""
    from mmdsynth.datasets.library import add_models, find_model_files

    for p in args.models:
        if not p.exists():
            raise _user_error(f"{p}: no such file or folder")
    if args.group is not None and ("/" in args.group or "\\" in args.group or args.group.strip() in ("", ".", "..")):
        raise _user_error(f"--group {args.group!r}: must be a single folder name")
    lib = args.library
    files = find_model_files(args.models, exclude=[lib])
    if not files:
        raise _user_error("no .pmx/.pmd files found in " + ", ".join(str(p) for p in args.models))
    suggest = None if args.no_suggest else suggester("add")
    with _open(lib, create=True) as catalog:
        try:
            report = add_models(catalog, files, group=args.group, suggest=suggest, progress=True)
        except sqlite3.Error as exc:
            raise _user_error(f"{catalog.path}: {exc}") from None
        for entry in report.entries:
            for warning in entry.warnings:
                print(f"mmdsynth add: warning: {entry.source}: {warning}", file=sys.stderr)
            if entry.outcome == "error":
                print(f"mmdsynth add: error: {entry.message}", file=sys.stderr)
        print(f"{report.summary()} ({catalog.library})")
    return 1 if report.errors else 0


def cmd_catalog(args: argparse.Namespace) -> int:
    """``mmdsynth catalog``: list, export or import."""
    rest = args.args
    if rest[0] in ("export", "import") and len(rest) == 3:
        if args.json or args.status:
            raise _user_error(f"catalog {rest[0]} takes no --json/--status")
        try:
            if rest[0] == "export":
                return _cmd_export(Path(rest[1]), Path(rest[2]))
            return _cmd_import(Path(rest[1]), Path(rest[2]))
        except sqlite3.Error as exc:
            raise _user_error(f"{rest[1]}: catalog: {exc}") from None
    if rest[0] in ("export", "import") and not Path(rest[0]).is_dir():  # a word, not a library folder
        what = "OUT.json" if rest[0] == "export" else "IN.json"
        raise _user_error(f"catalog {rest[0]} needs LIB {what} (got {len(rest) - 1} argument{'s' if len(rest) != 2 else ''})")
    if len(rest) != 1:
        raise _user_error("usage: catalog LIB [--json] | catalog export LIB OUT.json | catalog import LIB IN.json")
    try:
        return _cmd_list(Path(rest[0]), args.json, args.status)
    except sqlite3.Error as exc:
        raise _user_error(f"{rest[0]}: catalog: {exc}") from None


def _cmd_list(lib: Path, as_json: bool, status: str | None) -> int:
    from mmdsynth.datasets.catalog import STATUSES

    if status is not None and status not in STATUSES:
        raise _user_error(f"--status {status!r}: not one of {', '.join(STATUSES)}")
    with _open(lib) as catalog:
        rows = catalog.listing(status=status)
        library = catalog.library
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    print(format_listing(rows, library))
    return 0


def format_listing(rows: list[dict[str, Any]], library: Path | str = "") -> str:
    """The text table of ``mmdsynth catalog`` for :meth:`Catalog.listing` rows.

    Columns: ID (first 12 hex digits), STATUS, GROUP, HEAD (human/auto/none/
    missing), SLOTS as ``human/auto/missing`` counts over the seven slots,
    NAME (the file name when the model has none; the reason follows for a
    status other than ok). Ends with a count per status.
    """
    if not rows:
        return f"no models in {library}" if library else "no models"
    gw = max(5, min(30, max(len(r["group"]) for r in rows)))
    sw = max(6, max(len(r["status"]) for r in rows))
    lines = [f"{'ID':<12}  {'STATUS':<{sw}}  {'GROUP':<{gw}}  {'HEAD':<7}  {'SLOTS h/a/-':<11}  NAME"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        states = list(r["slots"].values())
        slots = f"{states.count('human')}/{states.count('auto')}/{states.count('missing')}"
        name = r["name"] or r["path"].rsplit("/", 1)[-1]
        if r["status"] != "ok" and r["reason"]:
            reason = r["reason"] if len(r["reason"]) <= 100 else r["reason"][:97] + "..."
            name = f"{name}  [{reason}]"
        group = r["group"] if len(r["group"]) <= gw else r["group"][: gw - 1] + "…"
        lines.append(f"{r['id'][:12]:<12}  {r['status']:<{sw}}  {group:<{gw}}  {r['head']:<7}  {slots:<11}  {name}")
    total = sum(counts.values())
    lines.append(f"{total} model{'s' if total != 1 else ''}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


def _cmd_export(lib: Path, out: Path) -> int:
    if out.is_dir():
        raise _user_error(f"{out}: is a folder; give a file name")
    with _open(lib) as catalog:
        n = catalog.export_annotations(out)
    print(f"exported annotations of {n} model{'s' if n != 1 else ''} to {out}")
    return 0


def _cmd_import(lib: Path, src: Path) -> int:
    from mmdsynth.datasets.catalog import CatalogError

    if not src.is_file():
        raise _user_error(f"{src}: no such file")
    with _open(lib) as catalog:
        try:
            report = catalog.import_annotations(src)
        except CatalogError as exc:
            raise _user_error(str(exc)) from None
    for model_id in report.missing:
        print(f"mmdsynth catalog import: skipped {model_id[:12]}: not in this library", file=sys.stderr)
    print(
        f"imported {src}: {report.values_changed} value{'s' if report.values_changed != 1 else ''} changed in "
        f"{report.models_changed} model{'s' if report.models_changed != 1 else ''}, {report.unchanged} already there, "
        f"{report.kept} kept (the library's value wins), {len(report.missing)} model{'s' if len(report.missing) != 1 else ''} not in the library"
    )
    return 0
