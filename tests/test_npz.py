"""inputs.npz.read_members: the same arrays as np.load (dtype, shape, memory order, values) for every kind of
member the cache writes and more, and a clear error naming the file for what np.load(allow_pickle=False) refuses."""
from __future__ import annotations

import numpy as np
import pytest

from ichbench.inputs import npz


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "sop_uids": np.array(["1.2.3", "ID_abc", "é-uid"]),
        "gt_area_mm2": rng.random(7).astype(np.float32),
        "slice_thickness": np.float32(5.0),            # 0-d
        "has_gt": np.bool_(True),
        "spacing": np.zeros(0, np.float32),            # empty
        "masks": rng.random((3, 4, 5)) > 0.5,
        "fortran": np.asfortranarray(rng.integers(-9, 9, (4, 6)).astype(np.int16)),
        "big_endian": np.arange(5, dtype=">i4"),
        "records": np.array([(1, 2.5)], dtype=[("a", "<i2"), ("b", "<f8")]),
    }


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_members_equal_np_load(tmp_path, save):
    arrays = _arrays()
    path = tmp_path / "s.npz"
    save(path, **arrays)
    names = list(arrays) + ["not_there"]
    got = npz.read_members(path, names)
    assert list(got) == list(arrays)                  # names it does not hold are left out, order kept
    with np.load(path, allow_pickle=False) as z:
        for name, value in got.items():
            ref = z[name]
            assert value.dtype == ref.dtype and value.shape == ref.shape, name
            assert value.flags.f_contiguous == ref.flags.f_contiguous, name
            assert value.flags.writeable, name
            np.testing.assert_array_equal(value, ref)
    # a second file with the same headers (the parsed headers are remembered) and other values
    arrays2 = {k: (v[::-1].copy() if v.ndim == 1 else v) for k, v in arrays.items()}
    save(tmp_path / "t.npz", **arrays2)
    for name, value in npz.read_members(tmp_path / "t.npz", arrays).items():
        np.testing.assert_array_equal(value, arrays2[name])


def test_objects_and_broken_files_are_refused_naming_the_file(tmp_path):
    objects = tmp_path / "objects.npz"
    np.savez(objects, ok=np.arange(3), bad=np.array([{"a": 1}], dtype=object))
    assert list(npz.read_members(objects, ["ok"])) == ["ok"]     # only what is asked is read
    with pytest.raises(npz.NpzError, match=r"objects\.npz: member bad: holds Python objects"):
        npz.read_members(objects, ["bad"])
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(npz.NpzError, match=r"text\.npz: not a readable NPZ"):
        npz.read_members(text, ["a"])
    whole = tmp_path / "whole.npz"
    np.savez(whole, a=np.arange(100, dtype=np.int64))
    raw = whole.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(npz.NpzError, match=r"cut\.npz"):
        npz.read_members(cut, ["a"])
