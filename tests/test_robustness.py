"""Malformed input: Gene as PMX and PMD, truncated at 500+ offsets and with
2,000+ random byte mutations each. Only MMDFormatError or success may come
out of the loader, and no call may hang (2 s bound, about 100x a normal load)."""

from __future__ import annotations

import random
import time
import zlib

import pytest

from mmdsynth.mmd import MMDFormatError
from mmdsynth.mmd.loader import parse_model

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


def test_arbitrary_small_inputs():
    rng = random.Random(7)
    stats = {"ok": 0, "error": 0, "slowest": 0.0}
    for prefix in (b"PMX ", b"Pmd", b""):
        for _ in range(300):
            _check(prefix + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))), "small", stats)
    assert stats["ok"] == 0
