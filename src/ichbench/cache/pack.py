"""Writes the slice store (cache/store.py reads it): a shard's NPZs packed into its arrays; where `preprocess`
packs (`store_needed`), and the packing on demand, one packer per shard, of a job that finds no usable store."""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..inputs.indexrows import csv_records
from .store import FORMAT, IMAGES, INDEX_COLUMNS, MASKS, STORE_DIR, _read_store, store_dir

LOCK_FILE = ".store.lock"
#: a partial store of another host (whose packer cannot be asked) is removed after a day without change
STALE_PARTIAL_S = 86400


def _write_header(f, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    _write_all(f, header.getbuffer())


def _npy_members(path: Path) -> dict[str, tuple[int | None, tuple[int, ...], np.dtype]]:
    """The arrays of an NPZ without reading them: name -> (where its data start in the file, or None where the
    member is compressed or not a plain C-order array; shape; dtype), from the zip's and the .npy headers."""
    import struct
    import zipfile

    out = {}
    with open(path, "rb") as raw, zipfile.ZipFile(raw) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                fmt = np.lib.format
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = read(member)
                header = member.tell()
            offset = None
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if info.compress_type == zipfile.ZIP_STORED and not fortran and not dtype.hasobject \
                    and info.file_size == header + nbytes:
                raw.seek(info.header_offset)
                local = raw.read(30)              # the local file header: its name and extra field lengths
                if len(local) == 30 and local[:4] == b"PK\x03\x04":
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                    offset = info.header_offset + 30 + name_len + extra_len + header
            out[info.filename[:-4]] = (offset, tuple(shape), dtype)
    return out


def _copy_bytes(path: Path, offset: int, count: int, dst) -> None:
    """Append `count` bytes of `path` from `offset` to the open unbuffered file `dst`: in the kernel
    (os.copy_file_range) where it can, else read and written 1 MiB at a time."""
    with open(path, "rb") as src:
        done = 0
        copy = getattr(os, "copy_file_range", None)
        while copy is not None and done < count:
            try:
                n = copy(src.fileno(), dst.fileno(), count - done, offset + done)
            except OSError:
                copy = None
                break
            if n <= 0:
                break
            done += n
        src.seek(offset + done)
        while done < count:
            chunk = src.read(min(1 << 20, count - done))
            if not chunk:
                raise ConfigError(f"{path}: shorter than its arrays' headers say; rerun preprocessing")
            _write_all(dst, chunk)
            done += len(chunk)


def _write_all(f, data) -> None:
    """Write all of `data` to an unbuffered file (a raw write may take less)."""
    view = memoryview(data).cast("B")
    while len(view):
        view = view[f.write(view):]


def pack_shard(shard_dir: str | os.PathLike) -> Path | None:
    """Pack the NPZs listed in `<shard_dir>/series.csv` into `<shard_dir>/store/`: each array's bytes copied
    from its NPZ member (uncompressed: `os.copy_file_range`, nothing loaded; sequential writes). Replaces an
    older store. -> the store folder (None for a shard with no series)."""
    import pandas as pd

    shard_dir = Path(shard_dir)
    listing = shard_dir / "series.csv"
    if not listing.exists():
        raise ConfigError(f"{shard_dir}: no series.csv; is this a cache shard written by `ichbench preprocess`?")
    series = pd.read_csv(listing, dtype={"npz": str})
    final = store_dir(shard_dir)
    if final.exists():
        shutil.rmtree(final)
    if series.empty:
        return None
    names = series["npz"].tolist()
    first = _npy_members(shard_dir / names[0])
    shape = tuple(first[IMAGES][1][1:])
    missing = [k for k in MASKS if k not in first]
    if missing:
        raise ConfigError(f"{shard_dir / names[0]}: no {', '.join(missing)}; rerun `ichbench preprocess`")
    total = int(series["n_slices"].sum())
    for old in shard_dir.glob(STORE_DIR + ".partial*"):       # left by a packer that was stopped
        if _abandoned(old):
            shutil.rmtree(old, ignore_errors=True)
    tmp = shard_dir / f"{STORE_DIR}.partial-{socket.gethostname()}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    # unbuffered: the kernel's copies and these writes share the file offset
    files = {k: open(tmp / f"{k}.npy", "wb", buffering=0) for k in (IMAGES,) + MASKS}
    rows, start = [], 0
    try:
        _write_header(files[IMAGES], np.uint8, (total,) + shape)
        for k in MASKS:
            _write_header(files[k], np.bool_, (total,) + shape[1:])
        for name, n in zip(names, series["n_slices"].astype(int)):
            path = shard_dir / name
            members = first if name == names[0] else _npy_members(path)
            wanted = [(IMAGES, (n,) + shape, np.uint8)] + [(k, (n,) + shape[1:], np.bool_) for k in MASKS]
            for key, want, dtype in wanted:
                if key not in members:
                    raise ConfigError(f"{path}: no {key}; rerun `ichbench preprocess`")
                offset, got, got_dtype = members[key]
                if got != want or (key == IMAGES and got_dtype != np.uint8):
                    what = (f"{got_dtype} slices of shape {got}, series.csv and the shard's first series say "
                            f"{n} x {shape} uint8; rerun preprocessing" if key == IMAGES else
                            f"{key} of shape {got}, its images are {(n,) + shape}")
                    raise ConfigError(f"{path}: {what}")
                if offset is not None and got_dtype == dtype:
                    _copy_bytes(path, offset, int(np.prod(got, dtype=np.int64)) * np.dtype(dtype).itemsize, files[key])
                else:                                 # compressed, or another dtype: through numpy
                    with np.load(path, allow_pickle=False) as z:
                        _write_all(files[key], np.ascontiguousarray(z[key], dtype=dtype).data)
            st = path.stat()
            rows.append((name, start, n, st.st_size, st.st_mtime_ns))
            start += n
    finally:
        for f in files.values():
            f.close()
    pd.DataFrame(rows, columns=INDEX_COLUMNS).to_csv(tmp / "index.csv", index=False)
    (tmp / "store.json").write_text(json.dumps(
        {"format": FORMAT, "slices": total, "image_shape": list(shape), "masks": list(MASKS)}, indent=1))
    try:
        os.replace(tmp, final)
    except OSError:                       # a packer without the lock finished first: ours replaces its store
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


def _abandoned(partial: Path) -> bool:
    """Whether a partial store folder (`store.partial-<host>-<pid>`) was left by a packer that stopped: its
    process is gone from this host, or (another host's, or an older name) it has not changed for a day."""
    host, _, pid = partial.name.partition("-")[2].rpartition("-")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    try:
        return time.time() - partial.stat().st_mtime > STALE_PARTIAL_S
    except OSError:
        return False


def cohort_slices(data_dir: str | os.PathLike) -> int | None:
    """The slices of the series `index` selected (series_selected.csv's in `data_dir`): one per file of
    index.csv, or a NIfTI volume's n_slices. None where the folder lacks those tables or their columns, or a
    row of them has another number of fields than the header. (Plain csv: a preprocessing process has no
    pandas to import for this.)"""
    data_dir = Path(data_dir)

    def rows(name: str):
        with open(data_dir / name, newline="", encoding="utf-8") as f:
            header, records = csv_records(f, data_dir / name, ("series_uid",))
            for row in records:
                yield dict(zip(header, row))

    try:
        chosen = {r["series_uid"] for r in rows("series_candidates.csv")
                  if r.get("selected", "true").strip().lower() in ("true", "1")}
        total = 0.0
        for r in rows("index.csv"):
            if r["series_uid"] not in chosen:
                continue
            if "n_slices" not in r:
                total += 1
                continue
            try:
                n = float(r["n_slices"])
            except ValueError:
                n = math.nan
            total += 1.0 if math.isnan(n) else max(n, 1.0)
    except (OSError, ValueError, UnicodeDecodeError):     # IndexFormatError is a ValueError
        return None
    return int(total)


def store_needed(data_dir: str | os.PathLike, channels: int, size: int, budget_gb: float) -> bool:
    """Whether a fold of this cohort may be too large for the memory budget, so that its shards are best
    packed when they are cached: the selected series' slices (`cohort_slices`), their images and the three
    masks, against `budget_gb`. True where the slice count is unknown."""
    slices = cohort_slices(data_dir)
    if slices is None:
        return True
    return float(slices) * (channels + len(MASKS)) * size * size > float(budget_gb) * 2**30


def _store_problem(shard: Path) -> str | None:
    """Why the shard's store does not hold its NPZs as they are now (None: it does)."""
    import pandas as pd

    index, _, why = _read_store(shard)
    if why:
        return why
    series = pd.read_csv(shard / "series.csv", dtype={"npz": str})
    for name in series["npz"]:
        if name not in index.index:
            return f"{shard / name} is not in {store_dir(shard)}"
        try:
            st = (shard / name).stat()
        except OSError:
            return f"{shard / name} is missing"
        entry = index.loc[name]
        if st.st_size != entry["npz_bytes"] or st.st_mtime_ns != entry["npz_mtime_ns"]:
            return f"{shard / name} changed since {store_dir(shard)} was packed"
    return None


def ensure_packed(shards) -> list[Path]:
    """Pack each shard folder whose store is missing or stale (see `_store_problem`), one process per shard at
    a time (an exclusive `flock` on `<shard>/.store.lock` where the file system has it; concurrent packers
    otherwise write their own partial folders). -> the shards packed here."""
    import logging

    log = logging.getLogger(__name__)
    packed = []
    for shard in dict.fromkeys(Path(s) for s in shards):
        if _store_problem(shard) is None:
            continue
        with _shard_lock(shard):
            why = _store_problem(shard)               # another job may have packed it meanwhile
            if why is None:
                continue
            log.info("packing the slice store of %s (%s)", shard, why)
            pack_shard(shard)
            packed.append(shard)
    return packed


class _shard_lock:
    """An exclusive advisory lock on a shard's lock file (nothing where there is no fcntl or no lock support)."""

    def __init__(self, shard: Path):
        self.path, self.f = shard / LOCK_FILE, None

    def __enter__(self):
        try:
            import fcntl

            self.f = open(self.path, "a")
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):
            if self.f is not None:
                self.f.close()
            self.f = None
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()                            # closing releases the lock
        return False
