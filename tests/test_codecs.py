"""Image chunk codecs: our chunk bytes against HDF5's own filters (hdf5plugin), both ways."""

from __future__ import annotations

import struct

import h5py
import lz4.block
import numpy as np
import pytest

from mmdsynth.datasets.codecs import CODECS, Codec, codec_of_dataset, get_codec

SHAPE = (48, 40, 4)


def images() -> np.ndarray:
    """Three images like renders: transparent around a textured blob, and one of pure noise
    (incompressible: the LZ4 filter stores such a block as is)."""
    rng = np.random.default_rng(5)
    out = np.zeros((3,) + SHAPE, np.uint8)
    out[0, 10:30, 8:35] = rng.integers(0, 256, (20, 27, 4))
    out[1, 5:45, 2:20] = 200
    out[2] = rng.integers(0, 256, SHAPE)
    return out


@pytest.mark.parametrize("compression,level", [("lz4", None), ("zstd", 1), ("zstd", 9), ("gzip", 1), ("gzip", 6),
                                               ("lzf", None)])
def test_our_chunks_are_what_hdf5_reads_and_writes(tmp_path, compression, level):
    codec = get_codec(compression, level)
    imgs = images()
    with h5py.File(tmp_path / "c.h5", "w") as f:
        ours = f.create_dataset("ours", shape=imgs.shape, dtype=np.uint8, chunks=(1,) + SHAPE, **codec.h5_options())
        for i, (data, mask) in enumerate(codec.encode(imgs)):
            ours.id.write_direct_chunk((i, 0, 0, 0), data, mask)
        theirs = f.create_dataset("theirs", data=imgs, chunks=(1,) + SHAPE, **codec.h5_options())
    with h5py.File(tmp_path / "c.h5", "r") as f:
        np.testing.assert_array_equal(f["ours"][()], imgs)  # HDF5's filter decodes our chunks
        assert codec_of_dataset(f["theirs"]) == codec
        for i in range(len(imgs)):
            mask, chunk = f["theirs"].id.read_direct_chunk((i, 0, 0, 0))
            decoded = codec.decode(bytes(chunk), imgs[i].nbytes)
            if compression == "lzf":
                assert decoded is None  # read through HDF5
            else:
                assert mask == 0 and bytes(decoded) == imgs[i].tobytes()  # we decode HDF5's chunks


def test_lz4_chunks_of_several_blocks_decode():
    """Other writers may cut a chunk into blocks (the filter's block-size option); one block may be stored as is."""
    raw = images()[0].tobytes()
    size = len(raw)
    block = 2048
    parts = [struct.pack(">qi", size, block)]
    for start in range(0, size, block):
        piece = raw[start:start + block]
        packed = lz4.block.compress(piece, store_size=False)
        if start == 0 or len(packed) >= len(piece):
            packed = piece  # stored
        parts.append(struct.pack(">i", len(packed)) + packed)
    assert bytes(Codec("lz4").decode(b"".join(parts), size)) == raw


def test_damaged_or_wrong_sized_chunks_raise_value_error():
    raw = images()[:1]
    for codec in (get_codec("lz4"), get_codec("zstd"), get_codec("gzip", 1)):
        data, _ = codec.encode(raw)[0]
        with pytest.raises(ValueError, match="decodes to|does not decode|chunk"):
            codec.decode(data, raw.nbytes + 4)
        with pytest.raises(ValueError):
            codec.decode(bytes(len(data)), raw.nbytes)  # zeros: no valid header or stream
    data, _ = get_codec("zstd").encode(raw)[0]
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x40  # a flipped bit in the payload: the frame checksum notices
    with pytest.raises(ValueError, match="does not decode"):
        get_codec("zstd").decode(bytes(bad), raw.nbytes)


def test_get_codec_names_levels_and_errors():
    assert get_codec("lz4").name == "lz4" and get_codec("lzf").name == "lzf"
    assert get_codec("zstd").name == "zstd-1" and get_codec("zstd", 22).name == "zstd-22"
    assert get_codec("gzip").name == "gzip-4" and get_codec("gzip", 0).name == "gzip-0"
    assert set(CODECS) == {"lz4", "zstd", "gzip", "lzf"}
    with pytest.raises(ValueError, match="compression must be one of 'lz4', 'zstd', 'gzip', 'lzf', got 'brotli'"):
        get_codec("brotli")
    with pytest.raises(ValueError, match="takes no level"):
        get_codec("lz4", 1)
    with pytest.raises(ValueError, match=r"gzip level must be an integer 0..9, got 10"):
        get_codec("gzip", 10)
    with pytest.raises(ValueError, match=r"zstd level must be an integer 1..22, got True"):
        get_codec("zstd", True)


def test_datasets_without_one_known_filter_have_no_codec(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        plain = f.create_dataset("plain", shape=(2,) + SHAPE, dtype=np.uint8, chunks=(1,) + SHAPE)
        shuffled = f.create_dataset("shuffled", shape=(2,) + SHAPE, dtype=np.uint8, chunks=(1,) + SHAPE,
                                    compression="gzip", shuffle=True)
        assert codec_of_dataset(plain) is None and codec_of_dataset(shuffled) is None
