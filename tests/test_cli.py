"""The command line as a user runs it: info, example, bench, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmdsynth.cli import main

INFO_KEYS = {"format", "version", "name", "name_en", "vertices", "faces", "materials", "textures", "bones", "morphs", "warnings"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmdsynth", *args], capture_output=True, text=True)


def test_info_json_on_gene_pmx(gene_pmx, capsys):
    assert main(["info", str(gene_pmx), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == INFO_KEYS
    assert doc["format"] == "pmx" and doc["version"] == 2.0
    assert doc["name"] == "ジェネ / Gene"
    assert (doc["vertices"], doc["faces"], doc["materials"]) == (28646, 47106, 13)
    assert doc["textures"]["missing"] == []
    assert len(doc["textures"]["referenced"]) == 10 and all(t.startswith("light/") for t in doc["textures"]["referenced"])
    assert len(doc["bones"]) == 224 and doc["bones"][:1] == ["全ての親"]
    assert len(doc["morphs"]) == 184
    first = doc["morphs"][0]
    assert set(first) == {"name", "panel", "kind", "size"}
    assert first == {"name": "browInnerUp", "panel": "other", "kind": "vertex", "size": 44}
    blink = next(m for m in doc["morphs"] if m["name"] == "まばたき")
    assert blink["panel"] == "eye" and blink["kind"] == "vertex"
    assert doc["warnings"] == []


def test_info_json_on_gene_pmd_has_no_base_morph(gene_pmd, capsys):
    assert main(["info", str(gene_pmd), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == INFO_KEYS
    assert doc["format"] == "pmd" and doc["vertices"] == 28646
    assert len(doc["morphs"]) == 177 and all(m["name"] != "base" for m in doc["morphs"])
    assert all(m["kind"] == "vertex" for m in doc["morphs"])


def test_info_text_is_readable(gene_pmx, capsys):
    assert main(["info", str(gene_pmx)]) == 0
    out = capsys.readouterr().out
    assert "PMX 2.0" in out and "28,646 vertices" in out and "224 bones" in out
    assert "eye morphs" in out and "まばたき" in out
    assert "key bones: センター, 上半身, 首, 頭, 両目, 左目, 右目" in out


def test_info_reports_missing_textures(gene_pmx, tmp_path, capsys):
    lone = tmp_path / "lonely.pmx"
    lone.write_bytes(gene_pmx.read_bytes())
    assert main(["info", str(lone), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["textures"]["missing"] == doc["textures"]["referenced"] and len(doc["textures"]["missing"]) == 10


@pytest.mark.parametrize("content", [None, b"", b"PMX \x00\x00\x00\x40", b"hello world", b"Pmd" + b"\x00" * 50])
def test_bad_input_is_one_line_and_exit_2(tmp_path, content):
    path = tmp_path / "bad.pmx"
    if content is not None:
        path.write_bytes(content)
    proc = run_cli("info", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmdsynth info: error: ") and "bad.pmx" in lines[0]
    assert "Traceback" not in proc.stderr


def test_example_command_writes_a_loadable_model(tmp_path, capsys):
    assert main(["example", str(tmp_path / "ex")]) == 0
    path = capsys.readouterr().out.strip()
    assert path.endswith("example.pmx")
    assert main(["info", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["textures"]["missing"] == []
    assert {"センター", "上半身", "首", "頭", "両目", "左目", "右目"} <= set(doc["bones"])
    assert {"まばたき", "ウィンク", "ウィンク右", "笑い", "ウィンク２", "ウィンク２右", "あ"} <= {m["name"] for m in doc["morphs"]}


def test_bench_parse_prints_both_loaders(gene_pmx, capsys):
    assert main(["bench", "parse", str(gene_pmx), "--repeat", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["file", "load_model", "pymeshio", "ratio"]
    assert out[1].startswith("Gene_light.pmx") and out[1].endswith("x") and out[1].count("ms") == 2


def test_bench_parse_missing_file_is_a_user_error(capsys):
    assert main(["bench", "parse", "/nonexistent.pmx"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_module_entry_point_and_help():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "info" in proc.stdout and "example" in proc.stdout and "bench" in proc.stdout


@pytest.mark.parametrize("argv, expected", [
    (["pose", "m.pmx", "--out", "x.png", "--directional", "abc"],
     "mmdsynth pose: error: argument --directional: invalid float value: 'abc' (see mmdsynth pose --help)"),
    (["pose", "m.pmx"], "mmdsynth pose: error: the following arguments are required: --out (see mmdsynth pose --help)"),
    (["nosuch"], "mmdsynth: error: argument COMMAND: invalid choice: 'nosuch'"),
    (["catalog", "export"], "mmdsynth catalog: error: catalog export needs LIB OUT.json (got 0 arguments)"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, expected, capsys):
    """No usage block: one line that says what is wrong and where the help is."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(expected)
