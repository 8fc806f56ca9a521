"""mmdsynth dedup: byte copies, same geometry (Gene PMX vs PMD), near duplicates
(Gene vs the example character: not one), decisions that survive re-runs, the
render job skipping duplicates, pHash and the geometry signature."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mmdsynth.datasets.catalog import Catalog
from mmdsynth.datasets.dedup import (
    DEFAULT_THRESHOLD,
    clear_decisions,
    duplicate_groups,
    find_duplicates,
    geometry_signature,
    hamming,
    keep_one,
    near_distance,
    phash,
    revert,
    split_group,
)
from mmdsynth.datasets.scan import scan_downloads
from mmdsynth.mmd.example import build_example_model, write_example


def run(argv: list[str]) -> int:
    """The CLI, as a user runs it (returns the exit status)."""
    from mmdsynth.cli import main

    return main(argv)


@pytest.fixture(scope="module")
def library(tmp_path_factory, gene_pmx, gene_pmd) -> tuple[Path, dict[str, str]]:
    """Gene (PMX + PMD), the example character in a zip, and a byte copy of it in another zip."""
    root = tmp_path_factory.mktemp("dedup")
    dl = root / "downloads"
    gene = dl / "gene" / "Gene"
    gene.mkdir(parents=True)
    for f in (gene_pmx, gene_pmd):
        shutil.copy(f, gene)
    shutil.copytree(gene_pmx.parent / "light", gene / "light")
    ex = write_example(root / "src")
    for group, name in (("original", "example.zip"), ("zmirror", "example-repack.zip")):
        (dl / group).mkdir()
        with zipfile.ZipFile(dl / group / name, "w") as zf:
            for p in sorted(ex.parent.rglob("*")):
                if p.is_file():
                    zf.write(p, f"example/{p.relative_to(ex.parent).as_posix()}")
            zf.writestr("example/readme.txt", f"from {group}")
    lib = root / "library"
    with Catalog.open(lib, create=True) as cat:
        scan_downloads(cat, dl, workers=1, progress=False)
        ids = {Path(r.path).name: r.id for r in cat.models()}
        from mmdsynth.annotate.suggest import suggest_head_bounds

        find_duplicates(cat, workers=1, head_fn=suggest_head_bounds)
    return lib, ids


def _group_with(groups, model_id):
    return next((g for g in groups if model_id in g.ids), None)


def test_byte_copy_is_found(library):
    lib, ids = library
    with Catalog.open(lib) as cat:
        copies = cat.byte_copies()
        assert cat.count() == 3  # Gene PMX, Gene PMD, the example: the copy has no row of its own
    assert copies == {ids["example.pmx"]: ["models/original/example/example/example.pmx",
                                            "models/zmirror/example-repack/example/example.pmx"]}


def test_gene_pmx_and_pmd_are_the_same_geometry(library):
    lib, ids = library
    pmx, pmd = ids["Gene_light.pmx"], ids["Gene_light.pmd"]
    with Catalog.open(lib) as cat:
        groups = duplicate_groups(cat)
        feats = cat.features()
        assert feats[pmx].geometry_hash == feats[pmd].geometry_hash is not None
        g = _group_with(groups, pmx)
        assert g is not None and set(g.ids) == {pmx, pmd} and g.kind == "geometry" and g.resolved
        assert g.representative == pmx  # PMX (more morphs) is kept
        assert g.members[1].distance == 0.0
        decision = cat.duplicate_decision(pmd)
        assert decision.decision == "duplicate" and decision.duplicate_of == pmx and decision.origin == "auto"
        assert cat.get(pmd).status == "duplicate" and cat.get(pmx).status == "ok"
        # the render job takes status ok only: the PMD duplicate is never rendered
        from mmdsynth.datasets.job import catalog_records

        assert {r.model_id for r in catalog_records(cat)} == {pmx, ids["example.pmx"]}
        # near distance of the two renders is small too (the PMD shows two extra face decals)
        d, detail = near_distance(feats[pmx], feats[pmd])
        assert d < DEFAULT_THRESHOLD and detail["geometry"] == 0.0


def test_gene_and_the_example_are_not_duplicates(library):
    lib, ids = library
    with Catalog.open(lib) as cat:
        groups = duplicate_groups(cat)
        feats = cat.features()
    assert _group_with(groups, ids["example.pmx"]) is None
    for gene in (ids["Gene_light.pmx"], ids["Gene_light.pmd"]):
        d, detail = near_distance(feats[gene], feats[ids["example.pmx"]])
        assert d > 2 * DEFAULT_THRESHOLD and set(detail) == {"head", "body", "color", "geometry"}


def test_decisions_survive_reruns_and_human_beats_auto(library):
    lib, ids = library
    pmx, pmd, ex = ids["Gene_light.pmx"], ids["Gene_light.pmd"], ids["example.pmx"]
    with Catalog.open(lib) as cat:
        changes = keep_one(cat, pmd, [pmx])  # a person prefers the PMD
        assert cat.get(pmx).status == "duplicate" and cat.get(pmd).status == "ok"
        find_duplicates(cat, compute=False)
        assert cat.duplicate_decision(pmx).origin == "human" and cat.get(pmx).status == "duplicate"
        assert duplicate_groups(cat)[0].representative == pmd
        revert(cat, changes)  # undo: the auto decisions are back, exactly
        assert cat.duplicate_decision(pmd).origin == "auto" and cat.get(pmd).status == "duplicate"
        assert cat.get(pmx).status == "ok"

        # a near group at a loose threshold; a person says they are different characters
        report = find_duplicates(cat, threshold=0.9, compute=False)
        g = _group_with(report.groups, ex)
        assert g is not None and g.kind == "near" and not g.resolved
        assert all(m.distance is not None for m in g.members)
        split_group(cat, [[pmx, pmd], [ex]])
        report = find_duplicates(cat, threshold=0.9, compute=False)
        assert _group_with(report.groups, ex) is None
        assert _group_with(report.groups, pmx) is not None  # the Gene pair still is one
        # marking the example a duplicate of Gene links it again, at any threshold
        keep_one(cat, pmx, [ex])
        report = find_duplicates(cat, compute=False)
        assert set(_group_with(report.groups, ex).ids) == {pmx, pmd, ex}
        assert cat.get(ex).status == "duplicate" and "duplicate of " + pmx in cat.get(ex).reason
        # clearing puts everything back
        clear_decisions(cat, [pmx, pmd, ex])
        report = find_duplicates(cat, compute=False)
        assert cat.get(ex).status == "ok" and cat.get(pmd).status == "duplicate"
        assert _group_with(report.groups, ex) is None
        assert cat.dedup_run()["threshold"] == DEFAULT_THRESHOLD


def test_dedup_cli(library, capsys):
    lib, ids = library
    assert run(["dedup", str(lib), "--all", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "group 1 (geometry, 2 models, resolved" in out and "Gene_light.pmd" in out
    assert "1 byte copy of 1 model (" in out and "1 same-geometry pair," in out and "1 group," in out  # singular
    assert run(["dedup", str(lib), "--threshold", "2"]) == 2


def test_phash_properties():
    rng = np.random.default_rng(0)
    img = (rng.random((64, 64)) * 255).astype(np.uint8)
    img = np.kron(img[:8, :8], np.ones((32, 32))).astype(np.uint8)  # blocky, 256x256
    h = phash(img)
    assert 0 <= h < 1 << 64 and phash(img) == h
    brighter = np.clip(img.astype(int) + 20, 0, 255).astype(np.uint8)
    assert hamming(h, phash(brighter)) <= 4
    other = np.kron((rng.random((8, 8)) * 255).astype(np.uint8), np.ones((32, 32))).astype(np.uint8)
    assert hamming(h, phash(other)) > 16
    assert hamming(f"{h:016x}", h) == 0


def test_phash_is_imagehash():
    import imagehash
    from PIL import Image

    rng = np.random.default_rng(1)
    for _ in range(5):
        im = Image.fromarray((rng.random((96, 80, 3)) * 255).astype(np.uint8))
        assert f"{phash(im):016x}" == str(imagehash.phash(im))


def test_geometry_signature_ignores_order_not_shape():
    m = build_example_model()
    sig = geometry_signature(m)
    rng = np.random.default_rng(0)
    perm = rng.permutation(m.vertex_count)
    inv = np.argsort(perm)
    m2 = build_example_model()
    m2.positions = m.positions[perm]
    faces = inv[m.faces.astype(np.int64)].astype(np.uint32)
    faces = np.roll(faces, 1, axis=1)  # same winding, another first vertex
    m2.faces = faces[rng.permutation(len(faces))]
    assert geometry_signature(m2) == sig
    m3 = build_example_model()
    m3.positions = m3.positions.copy()
    m3.positions[m3.faces[0, 0]] += [0.05, 0, 0]
    assert geometry_signature(m3) != sig
    m4 = build_example_model()
    m4.faces = m4.faces[:, ::-1].copy()  # flipped winding is another mesh
    assert geometry_signature(m4) != sig


def test_bench_dedup_entries_smoke(tmp_path):
    from mmdsynth.curate_cmd import _bench_dedup_entries

    r = _bench_dedup_entries(tmp_path, 60)
    assert r["entries"] == 60 and r["dedup_s"] > 0 and r["groups"] >= 1


def test_catalog_decision_rules(tmp_path):
    import hashlib

    from mmdsynth.datasets.catalog import ModelRecord

    ids = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    with Catalog.open(tmp_path / "lib", create=True) as cat:
        for i, m in enumerate(ids):
            cat.insert_model(ModelRecord(m, f"models/g/m{i}/m.pmx", "pmx", f"m{i}", "g", status="error" if i == 2 else "ok"))
        a, b, broken = ids
        assert cat.set_duplicate_decision(b, "duplicate", a, origin="human")
        assert not cat.set_duplicate_decision(b, "keep", origin="auto")  # auto never replaces human
        assert cat.get(b).status == "duplicate" and cat.get(b).reason == f"duplicate of {a}"
        assert not cat.set_duplicate_decision(b, "keep", origin="human", updated_at="2000-01-01T00:00:00Z")  # older
        assert cat.set_duplicate_decision(b, "keep", origin="human")
        assert cat.get(b).status == "ok"
        assert cat.set_duplicate_decision(broken, "duplicate", a)
        assert cat.get(broken).status == "error"  # other statuses are kept
        for bad in (dict(decision="maybe"), dict(decision="duplicate"), dict(decision="keep", duplicate_of=a),
                    dict(decision="duplicate", duplicate_of=b)):
            with pytest.raises(ValueError):
                cat.set_duplicate_decision(b, **bad)
        with pytest.raises(KeyError):
            cat.set_duplicate_decision(b, "duplicate", "0" * 64)
        assert cat.set_distinct(b, a) and not cat.set_distinct(a, b, origin="auto")
        assert list(cat.distinct_pairs()) == [tuple(sorted((a, b)))]
        assert cat.clear_distinct(a, b) and cat.distinct_pairs() == {}
        assert cat.clear_duplicate_decision(b) and cat.duplicate_decision(b) is None
