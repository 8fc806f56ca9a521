"""The TOML render spec: defaults, paths, every validation error, JSON round trip."""

from __future__ import annotations

import json
import os

import pytest

from mmdsynth.datasets.spec import ModelSelection, RenderSpec, SpecError, ValueRange, load_spec, parse_spec

DEMO = """\
library = "library"
output = "out/tha1-demo"
preset = "tha1"
schema = "tha1"
seed = 2019
shard_size = 500

[lighting]
ambient = [0.5, 1.2]
directional = 0.5

[splits.train]
examples = 8000
groups = ["downloads/set-a", "downloads/set-b"]

[splits.val]
examples = 1000
ids = [17, "abc"]

[splits.test]
examples = 1000
from = "catalog"
"""

MINIMAL = """\
library = "library"

[splits.train]
examples = 10
models = "all"
"""


def write_spec(folder, text, name="spec.toml", library=True):
    if library:
        (folder / "library").mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(folder, text, **kw) -> str:
    path = write_spec(folder, text, **kw)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message, "messages are one line"
    assert str(path) in message, "messages name the file"
    return message


def test_demo_spec_loads(tmp_path):
    spec = load_spec(write_spec(tmp_path, DEMO))
    assert spec.library == (tmp_path / "library").resolve()
    assert spec.output == (tmp_path / "out" / "tha1-demo").resolve()
    assert (spec.preset, spec.schema, spec.seed, spec.shard_size) == ("tha1", "tha1", 2019, 500)
    assert spec.lighting.ambient == ValueRange(0.5, 1.2) and not spec.lighting.ambient.fixed
    assert spec.lighting.directional == ValueRange(0.5, 0.5) and spec.lighting.directional.fixed
    assert spec.split_names == ["train", "val", "test"]
    assert spec.split("train").models == ModelSelection("groups", groups=("downloads/set-a", "downloads/set-b"))
    assert spec.split("val").models == ModelSelection("ids", ids=(17, "abc"))
    assert spec.split("test").models == ModelSelection("catalog")
    assert spec.split("train").examples == 8000
    assert spec.pose_schema.names == ["left_eye", "right_eye", "mouth", "head_x", "head_y", "neck_z"]


def test_defaults(tmp_path):
    spec = load_spec(write_spec(tmp_path, MINIMAL, name="my-data.toml"))
    assert spec.preset == "tha1" and spec.schema == "tha1"
    assert spec.max_angle == 15.0 and spec.seed == 0 and spec.shard_size == 1000
    assert spec.compression == "lz4" and spec.compression_level is None
    assert spec.codec.name == "lz4"
    assert spec.accept_auto_annotations is True
    assert spec.lighting.ambient == ValueRange(0.5, 1.2)
    assert spec.lighting.directional == ValueRange(0.5, 0.5)
    # output defaults to a folder named after the spec file, beside it
    assert spec.output == (tmp_path / "my-data").resolve()
    assert spec.split("train").models.kind == "all"


def test_compression_levels(tmp_path):
    spec = load_spec(write_spec(tmp_path, 'compression = "gzip"\n' + MINIMAL))
    assert spec.codec.name == "gzip-1"  # the spec's default level is 1 for gzip and zstd
    spec = load_spec(write_spec(tmp_path, 'compression = "gzip"\ncompression_level = 9\n' + MINIMAL))
    assert spec.codec.name == "gzip-9"
    spec = load_spec(write_spec(tmp_path, 'compression = "zstd"\n' + MINIMAL))
    assert spec.codec.name == "zstd-1" and spec.compression_level == 1
    spec = load_spec(write_spec(tmp_path, 'compression = "zstd"\ncompression_level = 19\n' + MINIMAL))
    assert spec.codec.name == "zstd-19"
    assert load_spec(write_spec(tmp_path, 'compression = "lzf"\n' + MINIMAL)).codec.name == "lzf"


def test_relative_paths_resolve_against_the_spec_folder(tmp_path, monkeypatch):
    sub = tmp_path / "specs"
    sub.mkdir()
    path = write_spec(sub, 'library = "../lib"\noutput = "../data"\n[splits.train]\nexamples = 1\nmodels = "all"\n', library=False)
    (tmp_path / "lib").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec(os.path.relpath(path, elsewhere))
    assert spec.library == (tmp_path / "lib").resolve()
    assert spec.output == (tmp_path / "data").resolve()


@pytest.mark.parametrize(
    "text, expected",
    [
        ('libary = "x"\n' + MINIMAL, "unknown key 'libary'"),
        (MINIMAL + "[lighting]\nambiant = 0.7\n", "[lighting]: unknown key 'ambiant'"),
        (MINIMAL + "exmaples = 3\n", "[splits.train]: unknown key 'exmaples'"),
        (MINIMAL + "[splits.val]\nexamples = 3\nmodels = \"all\"\nseed = 4\n", "[splits.val]: unknown key 'seed'"),
    ],
)
def test_unknown_keys_are_named(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert expected in message
    assert "known keys" in message


def test_unknown_key_suggests_the_close_one(tmp_path):
    assert "unknown key 'shard_sise' (did you mean 'shard_size'? known keys: library, output" in error_of(tmp_path, "shard_sise = 3\n" + MINIMAL)


@pytest.mark.parametrize(
    "line, expected",
    [
        ('seed = "1"', "seed must be an integer, got string '1'"),
        ("seed = 1.5", "seed must be an integer"),
        ("seed = true", "seed must be an integer, got boolean"),
        ("shard_size = 2.0", "shard_size must be an integer"),
        ('accept_auto_annotations = "yes"', "accept_auto_annotations must be true or false"),
        ("preset = 3", "preset must be a string"),
        ('max_angle = "15"', "max_angle must be a number"),
        ("lighting = 3", "lighting must be a table"),
    ],
)
def test_wrong_types(tmp_path, line, expected):
    assert expected in error_of(tmp_path, line + "\n" + MINIMAL)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("seed = -1", "seed = -1 is out of range"),
        ("shard_size = 0", "shard_size = 0 is out of range"),
        ("max_angle = 0", "max_angle = 0 is out of range (> 0 and <= 90)"),
        ("max_angle = 120", "max_angle = 120 is out of range"),
        ('preset = "tha9"', "preset = 'tha9' is not one of 'tha1', 'tha3'"),
        ('schema = "tha3x"', "schema = 'tha3x' is not one of"),
        ('compression = "brotli"', "compression = 'brotli' is not one of 'lz4', 'zstd', 'gzip', 'lzf'"),
        ('compression = "lzf"\ncompression_level = 3', "compression_level only applies to compression = \"zstd\" or \"gzip\""),
        ('compression_level = 3', "compression_level only applies to compression = \"zstd\" or \"gzip\" (compression is 'lz4')"),
        ('compression = "gzip"\ncompression_level = 10', "compression_level = 10 is out of range (0..9)"),
        ('compression = "zstd"\ncompression_level = 0', "compression_level = 0 is out of range (1..22)"),
    ],
)
def test_bad_values(tmp_path, line, expected):
    assert expected in error_of(tmp_path, line + "\n" + MINIMAL)


@pytest.mark.parametrize(
    "lighting, expected",
    [
        ("ambient = [1.2, 0.5]", "[lighting]: ambient = [1.2, 0.5]: low is above high"),
        ("ambient = [0.5]", "ambient must be a number or a [low, high] pair"),
        ('ambient = "bright"', "ambient must be a number or a [low, high] pair"),
        ("directional = -0.5", "directional must be finite and >= 0"),
        ("directional = nan", "directional must be finite and >= 0"),
        ("ambient = [true, 1.0]", "ambient must be a number or a [low, high] pair"),
    ],
)
def test_bad_lighting(tmp_path, lighting, expected):
    assert expected in error_of(tmp_path, MINIMAL.replace("[splits.train]", f"[lighting]\n{lighting}\n\n[splits.train]"))


def test_fixed_and_ranged_lights(tmp_path):
    spec = load_spec(write_spec(tmp_path, MINIMAL.replace("[splits.train]", "[lighting]\nambient = 0.8\ndirectional = [0.2, 0.6]\n\n[splits.train]")))
    assert spec.lighting.ambient == ValueRange(0.8, 0.8)
    assert spec.lighting.directional == ValueRange(0.2, 0.6)


def test_missing_library_key(tmp_path):
    assert "missing required key 'library'" in error_of(tmp_path, "[splits.train]\nexamples = 1\nmodels = \"all\"\n")


def test_library_folder_must_exist(tmp_path):
    message = error_of(tmp_path, MINIMAL, library=False)
    assert "library" in message and "does not exist" in message
    # ...unless the caller says not to check (e.g. planning on another machine)
    spec = load_spec(tmp_path / "spec.toml", check_paths=False)
    assert spec.library == (tmp_path / "library").resolve()


def test_library_must_be_a_folder(tmp_path):
    (tmp_path / "lib.txt").write_text("x")
    assert "is not a folder" in error_of(tmp_path, MINIMAL.replace('"library"', '"lib.txt"'), library=False)


@pytest.mark.parametrize(
    "split, expected",
    [
        ("[splits.train]\nmodels = \"all\"\n", "[splits.train]: missing required key 'examples'"),
        ("[splits.train]\nexamples = 0\nmodels = \"all\"\n", "examples = 0 is out of range"),
        ("[splits.train]\nexamples = \"5\"\nmodels = \"all\"\n", "examples must be an integer"),
        ("[splits.train]\nexamples = 5\n", "say which models"),
        ("[splits.train]\nexamples = 5\nmodels = \"all\"\ngroups = [\"a\"]\n", "give only one of models, groups, ids, from (found models, groups)"),
        ("[splits.train]\nexamples = 5\nmodels = \"some\"\n", 'models must be "all"'),
        ("[splits.train]\nexamples = 5\nfrom = \"folder\"\n", 'from must be "catalog"'),
        ("[splits.train]\nexamples = 5\ngroups = []\n", "groups must be a non-empty list"),
        ("[splits.train]\nexamples = 5\ngroups = [\"a\", 3]\n", "groups must be a non-empty list"),
        ("[splits.train]\nexamples = 5\ngroups = [\"a\", \"a\"]\n", "group 'a' is listed twice"),
        ("[splits.train]\nexamples = 5\nids = [1.5]\n", "ids must be a non-empty list of model ids"),
        ("[splits.train]\nexamples = 5\nids = [3, 3]\n", "model id 3 is listed twice"),
        ("[splits.\"a/b\"]\nexamples = 5\nmodels = \"all\"\n", "split name 'a/b' must be a folder name"),
        ("splits = 3\n", "splits must be a table"),
        ("[splits]\n", "no splits"),
        ("", "missing [splits.NAME] tables"),
    ],
)
def test_bad_splits(tmp_path, split, expected):
    assert expected in error_of(tmp_path, 'library = "library"\n' + split)


def test_toml_syntax_error_is_one_line(tmp_path):
    message = error_of(tmp_path, 'library = "library\n[splits.train]\n')
    assert "not valid TOML" in message


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.toml")


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


def test_unknown_split_lookup(tmp_path):
    spec = load_spec(write_spec(tmp_path, MINIMAL))
    with pytest.raises(SpecError, match=r"no split 'val' \(the spec has: train\)"):
        spec.split("val")


def test_json_round_trip(tmp_path):
    spec = load_spec(write_spec(tmp_path, 'compression = "gzip"\ncompression_level = 7\nmax_angle = 20.0\naccept_auto_annotations = false\n' + DEMO.split("\n", 1)[1].replace("shard_size = 500\n", "shard_size = 500\nlibrary = \"library\"\n")))
    text = spec.to_json()
    assert "\n" not in text
    doc = json.loads(text)
    assert doc["spec_version"] == 1 and doc["library"] == str(spec.library)
    assert doc["splits"]["val"] == {"examples": 1000, "ids": [17, "abc"]}
    back = RenderSpec.from_json(text)
    assert back.to_dict() == spec.to_dict()
    assert back.splits == spec.splits and back.lighting == spec.lighting
    assert back.compression_level == 7 and back.accept_auto_annotations is False and back.max_angle == 20.0


def test_parse_spec_from_mapping(tmp_path):
    spec = parse_spec({"library": str(tmp_path), "output": "o", "splits": {"s": {"examples": 2, "models": "all"}}}, base=tmp_path)
    assert spec.output == (tmp_path / "o").resolve() and spec.source is None
    with pytest.raises(SpecError, match="missing required key 'output'"):
        parse_spec({"library": str(tmp_path), "splits": {"s": {"examples": 2, "models": "all"}}}, base=tmp_path)
