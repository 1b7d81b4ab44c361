"""The slice store: a shard's cached slices packed into memory-mappable arrays, so that a fold too large for
the memory budget is read batch by batch, as gathers from the map, instead of being loaded.

Layout, `<shard>/store/` (written by `cache.pack.pack_shard`: at the end of `ichbench preprocess` where the cohort's slices
do not fit the memory budget (`store_needed`), by the first train or score job that reads a fold from a shard
without a usable store (`ensure_packed`, one packer per shard under a file lock), or by `ichbench pack`):

    images.npy      uint8 (N, C, S, S)  every slice of the shard's NPZs, one series after the other
    head_mask.npy   bool  (N, S, S)
    brain_mask.npy  bool  (N, S, S)
    gt_mask.npy     bool  (N, S, S)
    index.csv       npz, start, n_slices, npz_bytes, npz_mtime_ns: slice `slice_index` of `npz` is row
                    `start + slice_index`; the size and time of each NPZ when it was packed
    store.json      format, slices, image_shape, masks

The arrays hold the NPZs' own bytes (plain `.npy` files: `np.load(..., mmap_mode="r")` opens them too); the
NPZs stay the cache every other stage reads. A store whose NPZ no longer has the size and modification time it
was packed from is not used (`open_fold` says why): a cache rewritten by hand or by an older ichbench.
"""
from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

FORMAT = 1
STORE_DIR = "store"
IMAGES = "images"
MASKS = ("head_mask", "brain_mask", "gt_mask")
INDEX_COLUMNS = ["npz", "start", "n_slices", "npz_bytes", "npz_mtime_ns"]
#: bytes gathered from one map between two releases of its resident pages (see StoreArray). A random gather
#: maps up to ~8x the bytes it reads (the kernel maps the neighbouring cached pages of each fault): 8 MiB keeps
#: a 3 GB store's mapped pages under ~100 MB (64 MiB let them reach 500 MB); a release costs ~15 us.
RELEASE_BYTES = 8 * 2**20
#: train.memory_budget_gb's default: a fold whose slices (images and masks) take more is read from the store
DEFAULT_BUDGET_GB = 4.0


def store_dir(shard_dir: str | os.PathLike) -> Path:
    return Path(shard_dir) / STORE_DIR

def map_npy(path: str | os.PathLike) -> tuple[np.ndarray, mmap.mmap]:
    """A read-only view of a `.npy` file through its own memory map (kept, to release its pages)."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except ValueError as exc:
            raise ConfigError(f"{path}: not a .npy array ({exc}); run `ichbench pack` on its shard") from None
        offset = f.tell()
        need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = os.fstat(f.fileno()).st_size
        if fortran or dtype.hasobject or size < need:
            raise ConfigError(f"{path}: truncated or not a plain array ({size} of {need} bytes); "
                              "run `ichbench pack` on its shard")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.ndarray(shape, dtype, buffer=mm, offset=offset), mm


class StoreArray:
    """Rows of memory-mapped store arrays in a caller's order (row i is `maps[which[i]][pos[i]]`), read by
    gathers: `take(idx)`, `a[idx]`, `chunks()`. Nothing is loaded until it is asked for.

    Pages of a file mapping that a gather touched stay mapped, and count in the process's resident memory
    (ru_maxrss) until the kernel needs them back; every RELEASE_BYTES gathered, the maps drop them
    (madvise MADV_DONTNEED: they stay in the page cache, a later gather maps them again), so that resident
    memory stays bounded by the batches in flight rather than growing to the store's size."""

    def __init__(self, maps: list[tuple[np.ndarray, mmap.mmap]], which: np.ndarray, pos: np.ndarray,
                 release_bytes: int = RELEASE_BYTES):
        self._arrays = [a for a, _ in maps]
        self._maps = [m for _, m in maps]
        self.which = np.asarray(which, np.int64)
        self.pos = np.asarray(pos, np.int64)
        self.row_shape = tuple(self._arrays[0].shape[1:])
        self.dtype = self._arrays[0].dtype
        self.release_bytes = int(release_bytes)
        self._touched = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.pos),) + self.row_shape

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def nbytes(self) -> int:
        return len(self.pos) * int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.pos)

    def take(self, idx, out: np.ndarray | None = None) -> np.ndarray:
        """Rows `idx` (in that order) into `out` (or a new array): per map, the rows are read in file order
        (sorted, for locality on a disk) and put back in the order asked for."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        if out is None:
            out = np.empty((len(idx),) + self.row_shape, self.dtype)
        if not len(idx):
            return out
        which, pos = self.which[idx], self.pos[idx]
        parts = [(0, slice(None))] if len(self._arrays) == 1 else \
            [(w, np.nonzero(which == w)[0]) for w in np.unique(which)]
        for w, sel in parts:
            p = pos[sel]
            if len(p) > 1 and np.any(p[1:] < p[:-1]):
                order = np.argsort(p, kind="stable")
                target = order if isinstance(sel, slice) else sel[order]
                out[target] = np.take(self._arrays[w], p[order], axis=0)
            elif isinstance(sel, slice):
                np.take(self._arrays[w], p, axis=0, out=out)
            else:
                out[sel] = np.take(self._arrays[w], p, axis=0)
        self._touched += out.nbytes
        if self._touched >= self.release_bytes:
            self.release()
        return out

    def release(self) -> None:
        """Drop the maps' resident pages (they stay in the page cache)."""
        self._touched = 0
        for m in self._maps:
            if hasattr(m, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                m.madvise(mmap.MADV_DONTNEED)

    def chunks(self, rows: int = 4096) -> Iterator[np.ndarray]:
        """All rows in order, `rows` at a time."""
        for s in range(0, len(self), rows):
            yield self.take(np.arange(s, min(s + rows, len(self))))

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.take([int(np.arange(len(self))[key])])[0]
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean index of shape {key.shape} for {len(self)} rows")
            key = np.nonzero(key)[0]
        return self.take(key)


def _read_store(shard: Path) -> tuple[pd.DataFrame | None, dict | None, str | None]:
    import pandas as pd

    d = store_dir(shard)
    try:
        meta = json.loads((d / "store.json").read_text())
        index = pd.read_csv(d / "index.csv", dtype={"npz": str})
    except FileNotFoundError:
        return None, None, f"{shard} has no slice store ({d})"
    except (ValueError, OSError) as exc:
        return None, None, f"{d} is unreadable ({exc})"
    if meta.get("format") != FORMAT or list(index.columns) != INDEX_COLUMNS:
        return None, None, f"{d} is of another format than this ichbench writes"
    return index.set_index("npz"), meta, None


def open_fold(rows: pd.DataFrame, keys: tuple[str, ...] = ()) -> tuple[dict[str, StoreArray] | None, str | None]:
    """The images and masks `keys` of manifest rows (columns npz, slice_index), in row order, as StoreArrays
    over the stores of the shards their NPZs lie in. -> (arrays, None), or (None, why) where a shard has no
    usable store (none, another format, or an NPZ changed since it was packed)."""
    npz = rows["npz"].astype(str).to_numpy()
    names, codes = np.unique(npz, return_inverse=True)
    dirs = [os.path.dirname(n) for n in names]
    shard_of_name = {}
    shards: list[str] = []
    for d in dirs:
        if d not in shard_of_name:
            shard_of_name[d] = len(shards)
            shards.append(d)
    start = np.empty(len(names), np.int64)
    count = np.empty(len(names), np.int64)
    metas = []
    for s, shard in enumerate(shards):
        index, meta, why = _read_store(Path(shard))
        if why:
            return None, why
        bad = [k for k in keys if k not in meta["masks"] and k != IMAGES]
        if bad:
            return None, f"{store_dir(shard)} holds no {', '.join(bad)}"
        metas.append(meta)
        for j in np.nonzero([shard_of_name[d] == s for d in dirs])[0]:
            base = os.path.basename(names[j])
            if base not in index.index:
                return None, f"{names[j]} is not in {store_dir(shard)}"
            entry = index.loc[base]
            try:
                st = os.stat(names[j])
            except OSError:
                return None, f"{names[j]} is missing"
            if st.st_size != entry["npz_bytes"] or st.st_mtime_ns != entry["npz_mtime_ns"]:
                return None, f"{names[j]} changed since {store_dir(shard)} was packed"
            start[j], count[j] = entry["start"], entry["n_slices"]
    if any(m["image_shape"] != metas[0]["image_shape"] for m in metas):
        return None, "the shards' stores hold slices of different sizes; rerun preprocessing with one image size"
    slice_index = rows["slice_index"].to_numpy(np.int64)
    if np.any(slice_index < 0) or np.any(slice_index >= count[codes]):
        return None, "the manifest names slices beyond the series the stores hold"
    which = np.array([shard_of_name[d] for d in dirs], np.int64)[codes]
    pos = start[codes] + slice_index
    arrays = {}
    for key in (IMAGES,) + tuple(k for k in keys if k != IMAGES):
        maps = [map_npy(store_dir(shard) / f"{key}.npy") for shard in shards]
        arrays[key] = StoreArray(maps, which, pos)
    return arrays, None
