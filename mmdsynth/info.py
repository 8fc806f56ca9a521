"""``mmdsynth info``: what a model file holds, as text or JSON."""

from __future__ import annotations

from mmdsynth.mmd import Model, MorphKind, MorphPanel
from mmdsynth.mmd.textures import texture_report


def model_summary(model: Model) -> dict:
    """The ``info --json`` document: exactly the keys format, version, name,
    name_en, vertices, faces, materials, textures ({"referenced", "missing"}),
    bones (names in file order), morphs ([{"name", "panel", "kind", "size"}]
    in file order; PMD without its base morph), warnings."""
    textures = texture_report(model)
    return {
        "format": model.format,
        "version": model.version,
        "name": model.name,
        "name_en": model.name_en,
        "vertices": model.vertex_count,
        "faces": model.face_count,
        "materials": len(model.materials),
        "textures": {"referenced": textures["referenced"], "missing": textures["missing"]},
        "bones": [b.name for b in model.bones],
        "morphs": [
            {"name": m.name, "panel": _panel_name(m.panel), "kind": MorphKind(m.kind).label, "size": len(m)}
            for m in model.morphs
        ],
        "warnings": list(model.warnings),
    }


def _panel_name(panel: int) -> str:
    try:
        return MorphPanel(panel).name.lower()
    except ValueError:
        return str(panel)


def format_summary(summary: dict, path: str) -> str:
    """A readable multi-line rendering of :func:`model_summary`."""
    s = summary
    lines = [
        f"{path}",
        f"  {s['format'].upper()} {s['version']}  {s['name']!r}" + (f" / {s['name_en']!r}" if s["name_en"] else ""),
        f"  {s['vertices']:,} vertices, {s['faces']:,} faces, {s['materials']} materials, "
        f"{len(s['bones'])} bones, {len(s['morphs'])} morphs",
    ]
    refs, missing = s["textures"]["referenced"], s["textures"]["missing"]
    lines.append(f"  textures: {len(refs)} referenced, {len(missing)} missing")
    lines += [f"    missing: {name}" for name in missing]
    by_panel: dict[str, list[str]] = {}
    for m in s["morphs"]:
        by_panel.setdefault(m["panel"], []).append(m["name"])
    for panel in ("eye", "mouth", "eyebrow", "other", "system"):
        names = by_panel.get(panel)
        if names:
            shown = ", ".join(names[:12]) + (f", ... (+{len(names) - 12})" if len(names) > 12 else "")
            lines.append(f"  {panel} morphs ({len(names)}): {shown}")
    key_bones = [b for b in ("センター", "上半身", "首", "頭", "両目", "左目", "右目") if b in s["bones"]]
    lines.append(f"  key bones: {', '.join(key_bones) if key_bones else 'none'}")
    if s["warnings"]:
        lines.append(f"  warnings ({len(s['warnings'])}):")
        lines += [f"    {w}" for w in s["warnings"][:20]]
        if len(s["warnings"]) > 20:
            lines.append(f"    ... (+{len(s['warnings']) - 20})")
    return "\n".join(lines)
