"""Malformed input: Gene as PMX and PMD, truncated at 500+ offsets and with
2,000+ random byte mutations each. Only MMDFormatError or success may come
out of the loader, and no call may hang (2 s bound, about 100x a normal load).
load_model's peak Python memory stays a small multiple of the file size, on the
intact files and on seeded mutations."""

from __future__ import annotations

import random
import time
import tracemalloc
import zlib

import pytest

from mmdsynth.mmd import MMDFormatError
from mmdsynth.mmd.loader import load_model, parse_model

HANG_BOUND_S = 2.0


def _check(data: bytes, label: str, stats: dict) -> None:
    start = time.perf_counter()
    try:
        parse_model(data, label)
        stats["ok"] += 1
    except MMDFormatError as exc:
        assert exc.path == label and exc.field and exc.reason
        assert exc.offset is None or 0 <= exc.offset <= len(data)
        stats["error"] += 1
    elapsed = time.perf_counter() - start
    stats["slowest"] = max(stats["slowest"], elapsed)
    assert elapsed < HANG_BOUND_S, f"{label}: {elapsed:.2f} s"


def _truncation_offsets(n: int, rng: random.Random) -> list[int]:
    # Every offset in the header region, then evenly spread and random cut points.
    head = list(range(0, min(n, 200)))
    spread = [n * k // 200 for k in range(200)]
    return sorted(set(head + spread + [rng.randrange(n) for _ in range(150)] + [n - 1]))


@pytest.mark.parametrize("which", ["gene_pmx", "gene_pmd"])
def test_truncations_raise_only_format_errors(which, request):
    data = request.getfixturevalue(which).read_bytes()
    rng = random.Random(20261121)
    offsets = _truncation_offsets(len(data), rng)
    assert len(offsets) >= 500
    stats = {"ok": 0, "error": 0, "slowest": 0.0}
    for cut in offsets:
        _check(data[:cut], f"{which}[:{cut}]", stats)
    assert stats["error"] >= len(offsets) - 5  # optional PMD tail sections may end early


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8, 32))):
        n = len(out)  # deletions and insertions change the length as we go
        # Half the mutations hit the first 4 KiB, where the header and counts live.
        pos = rng.randrange(min(n, 4096)) if rng.random() < 0.5 else rng.randrange(n)
        how = rng.random()
        if how < 0.6:
            out[pos] = rng.randrange(256)
        elif how < 0.8:
            out[pos : pos + 4] = rng.choice((b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\x00\x00\x00\x00"))
        elif how < 0.9:
            del out[pos : pos + rng.randrange(1, 64)]
        else:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    return bytes(out)


@pytest.mark.parametrize("which", ["gene_pmx", "gene_pmd"])
def test_random_mutations_raise_only_format_errors(which, request):
    data = request.getfixturevalue(which).read_bytes()
    rng = random.Random(zlib.crc32(which.encode()))  # hash() is salted per process
    stats = {"ok": 0, "error": 0, "slowest": 0.0}
    for i in range(2000):
        _check(_mutate(data, rng), f"{which}#{i}", stats)
    assert stats["ok"] + stats["error"] == 2000
    assert stats["error"] > 200  # the mutations do reach the checks


# Peak Python memory of load_model (tracemalloc sees numpy's buffers too), as a
# multiple of the file size. Measured (Python 3.11.7, numpy 2.4.6): Gene PMX
# intact 12,715,318 bytes for a 2,814,276-byte file = 4.52x (the vertex gather's
# int64 index arrays dominate); its 51 mutations at most 4.52x (26 of the 52
# cases load; early errors stay near 1.00x, the bytes read). Gene PMD intact
# 7,941,808 for 2,721,078 = 2.92x, mutations at most 2.92x. The bound (8x + 1 MiB)
# leaves about 1.8x of margin; a count-driven over-allocation on a damaged file
# would go far past it.
MEMORY_FACTOR = 8
MEMORY_SLACK = 1 << 20
MEMORY_MUTATIONS = 17  # per part; 3 parts = 51 mutations per format (tracemalloc makes a load ~8x slower)


def _peak_load_memory(path) -> tuple[int, bool]:
    tracemalloc.start()
    try:
        load_model(path)
        ok = True
    except MMDFormatError:
        ok = False
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, ok


@pytest.mark.parametrize("part", [0, 1, 2])
@pytest.mark.parametrize("which", ["gene_pmx", "gene_pmd"])
def test_load_model_peak_memory_is_a_small_multiple_of_the_file(which, part, request, tmp_path):
    source = request.getfixturevalue(which)
    data = source.read_bytes()
    rng = random.Random(zlib.crc32(f"memory {which} {part}".encode()))
    cases = [data] if part == 0 else []
    cases += [_mutate(data, rng) for _ in range(MEMORY_MUTATIONS)]
    for i, case in enumerate(cases):
        path = tmp_path / f"{i}{source.suffix}"
        path.write_bytes(case)
        peak, ok = _peak_load_memory(path)
        bound = MEMORY_FACTOR * len(case) + MEMORY_SLACK
        assert peak <= bound, f"{which} case {i}: peak {peak / 2**20:.1f} MiB for {len(case) / 2**20:.1f} MiB ({peak / len(case):.2f}x)"
        if part == 0 and i == 0:
            assert ok and peak > 2 * len(data)  # the intact file loads, and the arrays are traced


def test_arbitrary_small_inputs():
    rng = random.Random(7)
    stats = {"ok": 0, "error": 0, "slowest": 0.0}
    for prefix in (b"PMX ", b"Pmd", b""):
        for _ in range(300):
            _check(prefix + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))), "small", stats)
    assert stats["ok"] == 0
