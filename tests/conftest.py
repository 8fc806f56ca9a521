"""Shared fixtures: where the shared test models live."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def testdata_dir() -> Path | None:
    """The shared test data folder: $MMDSYNTH_TESTDATA, else ../shared/testdata
    beside the project. None when the variable is unset and the folder is absent."""
    env = os.environ.get("MMDSYNTH_TESTDATA")
    if env:
        path = Path(env)
        if not path.is_dir():
            raise RuntimeError(f"MMDSYNTH_TESTDATA={env} is not a folder")
        return path
    path = ROOT.parent / "shared" / "testdata"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def testdata() -> Path:
    path = testdata_dir()
    if path is None:
        pytest.skip("shared test data not found: set MMDSYNTH_TESTDATA or put it at ../shared/testdata")
    return path


@pytest.fixture(scope="session")
def gene_pmx(testdata) -> Path:
    return testdata / "models" / "gene" / "Gene_light.pmx"


@pytest.fixture(scope="session")
def gene_pmd(testdata) -> Path:
    return testdata / "models" / "gene" / "Gene_light.pmd"


@pytest.fixture(scope="session")
def babylon_models(testdata) -> list[Path]:
    return sorted((testdata / "models" / "babylon-mmd").glob("*.pmx"))


@pytest.fixture
def lib(template_lib, tmp_path) -> Path:
    """A fresh copy of the test module's ``template_lib`` library (built once
    per module, changed freely by each test)."""
    copy = tmp_path / "lib"
    shutil.copytree(template_lib, copy, symlinks=True)
    return copy


@pytest.fixture
def cat(lib):
    """The catalog of :func:`lib`, open for the test."""
    from mmdsynth.datasets.catalog import Catalog

    catalog = Catalog.open(lib)
    yield catalog
    catalog.close()
