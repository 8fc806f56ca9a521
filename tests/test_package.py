"""Packaging: a plain (non-editable) install puts everything under `mmdsynth`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

from conftest import ROOT

FOLDERS = ("mmd", "render", "annotate", "datasets", "train")


def test_plain_install_adds_no_top_level_modules(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "dist", "__pycache__", "demo-out"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)],
        check=True,
    )
    (wheel,) = wheels.glob("mmdsynth-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"mmdsynth"}
    for folder in FOLDERS:
        assert f"mmdsynth/{folder}/__init__.py" in names

    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    py = env / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    installed = {p.name for p in site.iterdir()}
    for folder in FOLDERS:
        assert folder not in installed and f"{folder}.py" not in installed
    probe = "import importlib.util as u; print([n for n in %r if u.find_spec(n)])" % (FOLDERS,)
    found = subprocess.check_output([str(py), "-c", probe], text=True, cwd=tmp_path).strip()
    assert found == "[]"
    assert (site / "mmdsynth" / "mmd" / "pmx.py").is_file()
    assert (env / "bin" / "mmdsynth").is_file()
