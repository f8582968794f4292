"""The IDX reader: good files read back exactly; every kind of bad file is a DataError naming it."""

import gzip
import os
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import idx_bytes, write_idx
from resnetlab.data import DataError, read_idx
from resnetlab.data.idx import MAX_DEFLATE_RATIO


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.gz" if compress else "a"), array, compress)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and np.array_equal(out, array)
    assert out.flags.writeable


def test_other_types_big_endian(tmp_path):
    values = np.array([1, -2, 300], dtype=">i4")
    path = tmp_path / "ints"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + values.tobytes())
    assert read_idx(path).tolist() == [1, -2, 300]


def error_for(tmp_path, name, payload):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_bad_magic(tmp_path):
    assert "bad magic number" in error_for(tmp_path, "x", b"\x01\x02\x08\x01" + b"\x00" * 8)


def test_unknown_type_code(tmp_path):
    assert "unknown IDX type code 0x07" in error_for(tmp_path, "x", struct.pack(">BBBBI", 0, 0, 7, 1, 1) + b"\x00")


def test_too_short(tmp_path):
    assert "too short" in error_for(tmp_path, "x", b"\x00\x00")


def test_truncated_raw(tmp_path):
    data = idx_bytes(np.zeros((10, 4), np.uint8))
    assert "truncated or corrupt" in error_for(tmp_path, "x", data[:-5])


def test_truncated_gz(tmp_path):
    data = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 255, (50, 28, 28)).astype(np.uint8)))
    msg = error_for(tmp_path, "x.gz", data[: len(data) // 2])
    assert "truncated" in msg or "corrupt" in msg


def test_trailing_data(tmp_path):
    assert "more data than" in error_for(tmp_path, "x", idx_bytes(np.zeros((3,), np.uint8)) + b"\x01")


def test_corrupt_gzip(tmp_path):
    assert "gzip" in error_for(tmp_path, "x.gz", b"\x1f\x8b\x08\x00garbage-not-deflate")


def test_huge_header_is_rejected_before_allocating(tmp_path):
    # Header claims 60,000 x 28 x 28 x 1000 bytes: 47 GB. Nothing like that may be allocated.
    header = struct.pack(">BBBBIIII", 0, 0, 8, 4, 60000, 28, 28, 1000)
    for name, payload in (("raw", header + b"\x00" * 100), ("big.gz", gzip.compress(header + b"\x00" * 100))):
        path = tmp_path / name
        path.write_bytes(payload)
        tracemalloc.start()
        with pytest.raises(DataError, match="need"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 10 * 2**20


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "absent.gz")
    with pytest.raises(DataError, match="is a folder"):
        read_idx(tmp_path)


def test_unreadable_file_simulated(tmp_path, monkeypatch):
    # CI runs as root, which reads any file; simulate the refusal so the message is always tested.
    import resnetlab.data.idx as idx

    path = write_idx(tmp_path / "x.gz", np.zeros((2, 2), np.uint8))

    def refuse(p):
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(idx, "_open", refuse)
    with pytest.raises(DataError, match="permission denied; make the file readable"):
        read_idx(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.zeros((2, 2), np.uint8))
    path.chmod(0)
    with pytest.raises(DataError, match="permission denied"):
        read_idx(path)


def _check_reader(path, file_size):
    tracemalloc.start()
    try:
        out = read_idx(path)
        assert isinstance(out, np.ndarray)
    except DataError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # Never more than what the file can hold (raw) or decompress to, plus a working margin.
    assert peak <= 4 * file_size * MAX_DEFLATE_RATIO + 4 * 2**20


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=200), compress=st.booleans())
def test_random_bytes(tmp_path, payload, compress):
    path = tmp_path / ("r.gz" if compress else "r")
    path.write_bytes(gzip.compress(payload) if compress else payload)
    _check_reader(path, path.stat().st_size)


VALID = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, len(VALID)),
    compress=st.booleans(),
)
def test_mutated_files(tmp_path, edits, cut, compress):
    data = bytearray(VALID)
    for pos, value in edits:
        data[pos] = value
    data = bytes(data[:cut])
    if compress:
        data = gzip.compress(data)
        data = data[: max(1, len(data) - (len(VALID) - cut) % 7)]  # sometimes cut the gzip stream too
    path = tmp_path / ("m.gz" if compress else "m")
    path.write_bytes(data)
    _check_reader(path, len(data))
