"""The render spec: one TOML file that says what a dataset is made of.

``mmdsynth render SPEC.toml`` reads it with :func:`load_spec`; the resulting
:class:`RenderSpec` (frozen dataclasses) drives planning (:mod:`.plan`) and is
stored, as JSON (:meth:`RenderSpec.to_json`), in every shard it produces.

Example (``examples/tha1-demo.toml``)::

    library = "../demo-out/library"   # the library folder (mmdsynth scan); relative to this file
    output = "../demo-out/tha1-demo"  # where shards go: OUTPUT/SPLIT/shard-00000.h5
    preset = "tha1"                   # 256x256, head in rows 64..192
    schema = "tha1"                   # left_eye, right_eye, mouth, head_x, head_y, neck_z
    seed = 2019
    shard_size = 1000

    [lighting]
    ambient = [0.5, 1.2]              # U[0.5, 1.2] per example
    directional = 0.5

    [splits.train]
    examples = 8000
    groups = ["downloads/set-a", "downloads/set-b"]

    [splits.val]
    examples = 1000
    groups = ["downloads/set-c"]

Keys (top level)
----------------
``library`` (string, required)
    The library folder that ``mmdsynth scan`` fills (models and the catalog).
    A relative path is taken relative to the folder holding the spec file.
    It must exist.
``output`` (string, default: a folder named like the spec file without
``.toml``, beside it)
    The dataset folder; shards go to ``OUTPUT/SPLIT/shard-NNNNN.h5``, the
    split's ``index.json`` beside them. Relative to the spec file's folder.
    A command line ``--out`` may override it.
``preset`` (string, default ``"tha1"``)
    Image size and framing (DESIGN.md "Framing"): ``tha1`` 256x256, ``tha3``
    512x512.
``schema`` (string, default ``"tha1"``)
    The pose schema (:mod:`mmdsynth.mmd.schema`): parameter names, ranges and
    samplers.
``max_angle`` (number of degrees, default: the schema's, 15 for ``tha1``)
    The rotation that a rotation parameter of 1 means; in (0, 90].
``seed`` (integer >= 0, default 0)
    Every random draw (model order, poses, lights) derives from it, the split
    name and the example index (:mod:`.plan`); the same spec always plans the
    same dataset, however the work is spread over processes and machines.
``shard_size`` (integer >= 1, default 1000)
    Examples per shard file (the last shard of a split may hold fewer).
    At 256x256 a shard of 1000 examples is roughly 80-250 MB.
``compression`` (``"lz4"`` (default), ``"zstd"``, ``"gzip"`` or ``"lzf"``)
    HDF5 filter of the image datasets (:mod:`.codecs`). Measured on THA1
    renders of Gene (mostly transparent 256x256 RGBA, varied poses and
    lights) on a 2-core machine, per image: lz4 60.5 KiB, written in 0.49 ms,
    read in 0.05 ms; zstd (level 1) 49.0 KiB, 0.68 ms, 0.14 ms; gzip (level 1,
    zlib-ng) 61.2 KiB, 0.93 ms, 0.52 ms. lz4 keeps a trainer's data loader
    fast; zstd makes a dataset about 20% smaller; gzip and lzf need no HDF5
    plugin to read (lz4 and zstd shards: ``import hdf5plugin`` before h5py).
``compression_level`` (integer; only with ``zstd``: 1..22, default 1, or ``gzip``: 0..9, default 1)
    Higher levels write more slowly for smaller files; reading speed barely
    changes.
``accept_auto_annotations`` (boolean, default ``true``)
    Whether head bounds and eye/mouth morph assignments that come from the
    automatic suggestions (not reviewed by a person) are good enough. ``true``:
    they are used and the number of such models is reported as a warning;
    ``false``: only ``human`` annotations count, other models are skipped
    (and listed with the reason in ``index.json``).

Table ``[lighting]`` (DESIGN.md "Lighting"; the values drawn are stored per example)
-----------------------------------------------------------------------------------
``ambient`` (number or ``[low, high]``, default ``[0.5, 1.2]``)
    Ambient light magnitude (white): a fixed value, or drawn per example from
    U[low, high]. Finite, >= 0, low <= high.
``directional`` (number or ``[low, high]``, default ``0.5``)
    Magnitude of the white directional light that shines from the viewer onto
    the character's front; same forms as ``ambient``.

Tables ``[splits.NAME]`` (at least one; NAME is a folder name: letters, digits, ``_``, ``-``, ``.``)
---------------------------------------------------------------------------------------------------
``examples`` (integer >= 1, required)
    How many examples (morphed + posed pairs) the split gets; they are spread
    evenly over its models (counts differ by at most one).
Exactly one of these says which models belong to the split:

``models = "all"``
    Every model of the library.
``groups = ["folder", ...]``
    The models of these source groups (the download folder or archive the
    catalog records for each model). Keeping whole groups in one split keeps a
    franchise or an author out of the other splits.
``ids = ["3fa2b1c9", ...]``
    These catalog model ids (strings or integers, as the catalog shows them;
    a string may be a unique prefix of an id, as for the catalog's sha256 ids).
``from = "catalog"``
    The models that the catalog assigns to the split of this name
    (``mmdsynth split`` writes those assignments).

Errors
------
:class:`SpecError` (a ``ValueError``) with a one-line message that names the
file, the table and the key: an unknown key (a typo), a value of the wrong
type, a value out of range, a missing required key, a library folder that does
not exist, or TOML that does not parse.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .codecs import CODECS

__all__ = [
    "SpecError",
    "ValueRange",
    "LightingSpec",
    "ModelSelection",
    "SplitSpec",
    "RenderSpec",
    "load_spec",
    "parse_spec",
    "SPEC_VERSION",
]

#: Version of the JSON form written by :meth:`RenderSpec.to_json`.
SPEC_VERSION = 1

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_SELECTION_KEYS = ("models", "groups", "ids", "from")


class SpecError(ValueError):
    """A render spec is invalid; the message is one line naming file, table and key."""


@dataclass(frozen=True)
class ValueRange:
    """A per-example value drawn from U[low, high]; fixed when ``low == high``."""

    low: float
    high: float

    @property
    def fixed(self) -> bool:
        return self.low == self.high

    def to_json_value(self) -> float | list[float]:
        return self.low if self.fixed else [self.low, self.high]


@dataclass(frozen=True)
class LightingSpec:
    """Light magnitudes (white lights): ``ambient`` and ``directional`` ranges."""

    ambient: ValueRange = ValueRange(0.5, 1.2)
    directional: ValueRange = ValueRange(0.5, 0.5)


@dataclass(frozen=True)
class ModelSelection:
    """Which models a split takes.

    ``kind``: ``"all"``, ``"groups"`` (``groups`` holds the source group names),
    ``"ids"`` (``ids`` holds catalog model ids, int or str) or ``"catalog"``
    (the models whose catalog split is the split's name).
    """

    kind: str
    groups: tuple[str, ...] = ()
    ids: tuple[int | str, ...] = ()

    def to_json_value(self) -> dict[str, Any]:
        if self.kind == "all":
            return {"models": "all"}
        if self.kind == "groups":
            return {"groups": list(self.groups)}
        if self.kind == "ids":
            return {"ids": list(self.ids)}
        return {"from": "catalog"}


@dataclass(frozen=True)
class SplitSpec:
    """One split: its name (also its folder name), example count and model selection."""

    name: str
    examples: int
    models: ModelSelection


@dataclass(frozen=True)
class RenderSpec:
    """A validated render spec (see the module docstring for every key).

    Paths are absolute (resolved against the spec file's folder). ``splits``
    keeps the file's order. ``source`` is the spec file (None when parsed
    from a mapping without one).
    """

    library: Path
    output: Path
    splits: tuple[SplitSpec, ...]
    preset: str = "tha1"
    schema: str = "tha1"
    max_angle: float = 15.0
    seed: int = 0
    shard_size: int = 1000
    compression: str = "lz4"
    compression_level: int | None = None
    accept_auto_annotations: bool = True
    lighting: LightingSpec = LightingSpec()
    source: Path | None = None

    @property
    def split_names(self) -> list[str]:
        return [s.name for s in self.splits]

    def split(self, name: str) -> SplitSpec:
        """The split called ``name``; SpecError lists the spec's splits."""
        for s in self.splits:
            if s.name == name:
                return s
        raise SpecError(f"{self._where()}no split {name!r} (the spec has: {', '.join(self.split_names)})")

    @property
    def pose_schema(self):
        """The :class:`~mmdsynth.mmd.schema.PoseSchema` named by ``schema``."""
        from mmdsynth.mmd.schema import get_schema

        return get_schema(self.schema)

    @property
    def codec(self):
        """The :class:`~.codecs.Codec` of the image datasets."""
        from .codecs import get_codec

        return get_codec(self.compression, self.compression_level)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping in the TOML's own shape (absolute paths),
        plus ``spec_version``; :func:`parse_spec` reads it back."""
        d: dict[str, Any] = {
            "spec_version": SPEC_VERSION,
            "library": str(self.library),
            "output": str(self.output),
            "preset": self.preset,
            "schema": self.schema,
            "max_angle": self.max_angle,
            "seed": self.seed,
            "shard_size": self.shard_size,
            "compression": self.compression,
        }
        if self.compression_level is not None:
            d["compression_level"] = self.compression_level
        d["accept_auto_annotations"] = self.accept_auto_annotations
        d["lighting"] = {
            "ambient": self.lighting.ambient.to_json_value(),
            "directional": self.lighting.directional.to_json_value(),
        }
        d["splits"] = {s.name: {"examples": s.examples, **s.models.to_json_value()} for s in self.splits}
        return d

    def to_json(self) -> str:
        """The spec as a one-line JSON string (for the shards' ``spec`` attribute).
        Read it back with :meth:`from_json`."""
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RenderSpec:
        """The spec stored by :meth:`to_json` (paths are not checked: the
        library may live on another machine). Raises SpecError."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"stored spec is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError("stored spec is not a JSON object")
        data = dict(data)
        version = data.pop("spec_version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise SpecError(f"stored spec has spec_version {version!r}; this mmdsynth reads {SPEC_VERSION}")
        return parse_spec(data, base=Path.cwd(), source=None, check_paths=False)

    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""


# ----------------------------------------------------------------------------- parsing


def load_spec(path: str | Path, *, check_paths: bool = True) -> RenderSpec:
    """Read and validate a TOML render spec.

    Args:
        path: the spec file.
        check_paths: require the library folder to exist (default).

    Returns:
        The :class:`RenderSpec`, with ``library``/``output`` resolved against
        the spec file's folder.

    Raises:
        SpecError: the file is missing or unreadable, is not valid TOML, or any
            key is unknown, missing, of the wrong type or out of range (one
            line naming the file, table and key).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder, not a spec file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {' '.join(str(exc).split())}") from None
    return parse_spec(data, base=path.resolve().parent, source=path, check_paths=check_paths)


def parse_spec(data: Mapping[str, Any], base: str | Path, source: str | Path | None = None,
               check_paths: bool = True) -> RenderSpec:
    """Validate an already-parsed spec mapping (TOML's or :meth:`RenderSpec.to_dict`'s shape).

    ``base``: the folder relative paths are resolved against. ``source``: the
    file name used in messages (and stored as :attr:`RenderSpec.source`).
    Raises SpecError like :func:`load_spec`.
    """
    return _Parser(Path(base), Path(source) if source is not None else None, check_paths).parse(data)


_TOP_KEYS = (
    "library", "output", "preset", "schema", "max_angle", "seed", "shard_size", "compression",
    "compression_level", "accept_auto_annotations", "lighting", "splits",
)


class _Parser:
    def __init__(self, base: Path, source: Path | None, check_paths: bool):
        self.base = base
        self.source = source
        self.check_paths = check_paths

    # -- messages
    def error(self, table: str | None, message: str) -> SpecError:
        where = f"{self.source}: " if self.source else ""
        if table:
            where += f"[{table}]: "
        return SpecError(where + message)

    def check_keys(self, table: str | None, mapping: Mapping[str, Any], known: tuple[str, ...]) -> None:
        for key in mapping:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self.error(table, f"unknown key {key!r} ({hint}known keys: {', '.join(known)})")

    # -- typed getters
    def get_str(self, table, mapping, key, default=None, required=False, choices=None) -> str | None:
        if key not in mapping:
            if required:
                raise self.error(table, f"missing required key {key!r}")
            return default
        value = mapping[key]
        if not isinstance(value, str):
            raise self.error(table, f"{key} must be a string, got {_describe(value)}")
        if choices is not None and value not in choices:
            raise self.error(table, f"{key} = {value!r} is not one of {', '.join(repr(c) for c in choices)}")
        if not value.strip():
            raise self.error(table, f"{key} must not be empty")
        return value

    def get_int(self, table, mapping, key, default=None, required=False, low=None, high=None) -> int | None:
        if key not in mapping:
            if required:
                raise self.error(table, f"missing required key {key!r}")
            return default
        value = mapping[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(table, f"{key} must be an integer, got {_describe(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.error(table, f"{key} = {value} is out of range ({_range_text(low, high)})")
        return value

    def get_number(self, table, mapping, key, default=None, low=None, high=None, low_open=False) -> float | None:
        if key not in mapping:
            return default
        value = mapping[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(table, f"{key} must be a number, got {_describe(value)}")
        value = float(value)
        bad = not math.isfinite(value)
        bad |= low is not None and (value <= low if low_open else value < low)
        bad |= high is not None and value > high
        if bad:
            lo = f"{'>' if low_open else '>='} {low:g}" if low is not None else None
            hi = f"<= {high:g}" if high is not None else None
            raise self.error(table, f"{key} = {value:g} is out of range ({' and '.join(x for x in (lo, hi) if x)})")
        return value

    def get_bool(self, table, mapping, key, default) -> bool:
        if key not in mapping:
            return default
        value = mapping[key]
        if not isinstance(value, bool):
            raise self.error(table, f"{key} must be true or false, got {_describe(value)}")
        return value

    def get_range(self, table, mapping, key, default: ValueRange) -> ValueRange:
        if key not in mapping:
            return default
        value = mapping[key]
        if isinstance(value, (list, tuple)):
            if len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
                raise self.error(table, f"{key} must be a number or a [low, high] pair of numbers, got {_describe(value)}")
            low, high = float(value[0]), float(value[1])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            low = high = float(value)
        else:
            raise self.error(table, f"{key} must be a number or a [low, high] pair of numbers, got {_describe(value)}")
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0:
            raise self.error(table, f"{key} must be finite and >= 0, got {_describe(value)}")
        if low > high:
            raise self.error(table, f"{key} = [{low:g}, {high:g}]: low is above high")
        return ValueRange(low, high)

    def get_table(self, table_name, mapping, key) -> Mapping[str, Any]:
        value = mapping.get(key, {})
        if not isinstance(value, Mapping):
            raise self.error(table_name, f"{key} must be a table ([{key}]), got {_describe(value)}")
        return value

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return (p if p.is_absolute() else self.base / p).resolve()

    # -- the spec
    def parse(self, data: Mapping[str, Any]) -> RenderSpec:
        if not isinstance(data, Mapping):
            raise self.error(None, "the spec must be a table of keys")
        self.check_keys(None, data, _TOP_KEYS)

        library = self.path(self.get_str(None, data, "library", required=True))
        if self.check_paths and not library.is_dir():
            what = "is not a folder" if library.exists() else "does not exist"
            raise self.error(None, f"library {library} {what}")
        output_raw = self.get_str(None, data, "output")
        if output_raw is not None:
            output = self.path(output_raw)
        elif self.source is not None:
            output = self.source.resolve().with_suffix("")
        else:
            raise self.error(None, "missing required key 'output' (there is no spec file to name it after)")

        from mmdsynth.mmd.schema import SCHEMAS

        preset = self.get_str(None, data, "preset", "tha1", choices=_preset_names())
        schema_name = self.get_str(None, data, "schema", "tha1", choices=tuple(SCHEMAS))
        schema = SCHEMAS[schema_name]
        max_angle = self.get_number(None, data, "max_angle", float(schema.max_angle_deg), low=0.0, high=90.0, low_open=True)
        seed = self.get_int(None, data, "seed", 0, low=0, high=2**63 - 1)
        shard_size = self.get_int(None, data, "shard_size", 1000, low=1, high=10**7)
        compression = self.get_str(None, data, "compression", "lz4", choices=tuple(CODECS))
        levels = CODECS[compression]
        if levels is None:
            if "compression_level" in data:
                raise self.error(None, "compression_level only applies to compression = \"zstd\" or \"gzip\" "
                                       f"(compression is {compression!r})")
            level = None
        else:
            level = self.get_int(None, data, "compression_level", 1, low=levels[0], high=levels[1])
        accept_auto = self.get_bool(None, data, "accept_auto_annotations", True)

        lt = self.get_table(None, data, "lighting")
        self.check_keys("lighting", lt, ("ambient", "directional"))
        lighting = LightingSpec(
            ambient=self.get_range("lighting", lt, "ambient", LightingSpec.ambient),
            directional=self.get_range("lighting", lt, "directional", LightingSpec.directional),
        )

        if "splits" not in data:
            raise self.error(None, "missing [splits.NAME] tables (at least one split, e.g. [splits.train])")
        splits_table = self.get_table(None, data, "splits")
        if not splits_table:
            raise self.error("splits", "no splits (add a table such as [splits.train])")
        splits = tuple(self.parse_split(name, value) for name, value in splits_table.items())

        return RenderSpec(
            library=library, output=output, splits=splits, preset=preset, schema=schema_name,
            max_angle=max_angle, seed=seed, shard_size=shard_size, compression=compression,
            compression_level=level, accept_auto_annotations=accept_auto, lighting=lighting,
            source=self.source,
        )

    def parse_split(self, name: str, table: Any) -> SplitSpec:
        where = f"splits.{name}"
        if not isinstance(table, Mapping):
            raise self.error("splits", f"{name} must be a table ([splits.{name}]), got {_describe(table)}")
        if not _SPLIT_NAME.match(name):
            raise self.error(where, f"split name {name!r} must be a folder name (letters, digits, _ - .)")
        self.check_keys(where, table, ("examples",) + _SELECTION_KEYS)
        examples = self.get_int(where, table, "examples", required=True, low=1, high=10**10)
        given = [k for k in _SELECTION_KEYS if k in table]
        if not given:
            raise self.error(where, 'say which models: models = "all", groups = [...], ids = [...] or from = "catalog"')
        if len(given) > 1:
            raise self.error(where, f"give only one of models, groups, ids, from (found {', '.join(given)})")
        key = given[0]
        value = table[key]
        if key == "models":
            if value != "all":
                raise self.error(where, f'models must be "all" (use groups = [...] or ids = [...] to choose), got {_describe(value)}')
            selection = ModelSelection("all")
        elif key == "from":
            if value != "catalog":
                raise self.error(where, f'from must be "catalog", got {_describe(value)}')
            selection = ModelSelection("catalog")
        elif key == "groups":
            if not isinstance(value, (list, tuple)) or not value or not all(isinstance(g, str) and g for g in value):
                raise self.error(where, f"groups must be a non-empty list of group names (strings), got {_describe(value)}")
            dup = _first_duplicate(value)
            if dup is not None:
                raise self.error(where, f"group {dup!r} is listed twice")
            selection = ModelSelection("groups", groups=tuple(value))
        else:
            ok = isinstance(value, (list, tuple)) and value and all(
                (isinstance(i, int) and not isinstance(i, bool)) or (isinstance(i, str) and i) for i in value)
            if not ok:
                raise self.error(where, f"ids must be a non-empty list of model ids (integers or strings), got {_describe(value)}")
            dup = _first_duplicate(value)
            if dup is not None:
                raise self.error(where, f"model id {dup!r} is listed twice")
            selection = ModelSelection("ids", ids=tuple(value))
        return SplitSpec(name=name, examples=examples, models=selection)


def _preset_names() -> tuple[str, ...]:
    from mmdsynth.render.framing import PRESETS

    return tuple(PRESETS)


def _first_duplicate(values) -> Any:
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def _range_text(low, high) -> str:
    if low is not None and high is not None:
        return f"{low}..{high}"
    return f">= {low}" if low is not None else f"<= {high}"


def _describe(value: Any) -> str:
    """Short description of a TOML value for messages: its type and a clipped repr."""
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "table"}.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}"
