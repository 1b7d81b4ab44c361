"""Named arrays of an NPZ read in one pass: the per-series facts the report reads from every cached series.

`np.load(path)[name]` parses each member's .npy header with `ast.literal_eval` (about 40 us a member); the
report stages read 5-10 small members from each of tens of thousands of series (RSNA: ~22 k), so that parse
was most of their reading time. Here a header text is parsed once (by numpy's own reader) and remembered, and
a member's data are taken from its bytes: the same arrays (dtype, shape, order, values) as `np.load` with
`allow_pickle=False`, about twice as fast (docs/performance.md). Only small members should be read this way:
each is read whole into memory (the images of a series are not read unless named).
"""
from __future__ import annotations

import functools
import io
import os
import zipfile
from typing import Iterable

import numpy as np
from numpy.lib import format as npy


class NpzError(ValueError):
    """An NPZ, or a member of it, that cannot be read as plain arrays (the message names the file)."""


@functools.lru_cache(maxsize=4096)
def _header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a .npy header (magic, length and text), parsed by numpy."""
    f = io.BytesIO(head)
    version = npy.read_magic(f)
    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    return read(f)


def _array(raw: bytes, where: str) -> np.ndarray:
    if raw[:6] != npy.MAGIC_PREFIX or len(raw) < 10:
        raise NpzError(f"{where}: not a .npy array")
    major = raw[6]
    if major not in (1, 2, 3):
        raise NpzError(f"{where}: .npy format version {major} is not known")
    size_end = 10 if major == 1 else 12
    start = size_end + int.from_bytes(raw[8:size_end], "little")
    try:
        shape, fortran, dtype = _header(bytes(raw[:start]))
    except ValueError as exc:
        raise NpzError(f"{where}: {exc}") from exc
    if dtype.hasobject:
        raise NpzError(f"{where}: holds Python objects, which are not read (no pickles)")
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - start < count * dtype.itemsize:
        raise NpzError(f"{where}: {len(raw) - start} bytes of data for shape {shape} of {dtype}: truncated")
    flat = np.frombuffer(raw, dtype, count=count, offset=start)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


def read_members(path: str | os.PathLike, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The members of the NPZ at `path` among `names`, by name (names it does not hold are left out)."""
    try:
        with zipfile.ZipFile(path) as zf:
            held = set(zf.namelist())
            out = {}
            for name in names:
                member = f"{name}.npy"
                if member in held:
                    out[name] = _array(zf.read(member), f"{path}: member {name}")
            return out
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise NpzError(f"{path}: not a readable NPZ ({exc})") from exc
