"""Compare two checkouts' default and smoke runs file by file (each has run `make run` and `make smoke`).

    .venv/bin/python scripts/compare_runs.py BEFORE_DIR AFTER_DIR

Every file under results/, smoke/ and data/synthetic/ is compared, except those that carry wall-clock times,
commits, hosts or paths (run.json, runtimes.csv, logs, benchmarks, the report, checkpoints, .snakemake). A model.pt
is compared by its weights and fitted state only (its run record holds the code digest and the times); a
history.csv without its `seconds` column; a slice store's index.csv without its NPZ times; an NPZ array by array, a run record stored in it without the fields
that name the code version or the wall clock; anything else byte for byte. Prints each differing or missing file
and exits 1 if there is one.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ichbench.training.modelfile import load_model_file

#: Run-record fields that name the code version or the wall clock, not the result.
VOLATILE = {"code_digest", "git_commit", "git_modified", "train_seconds", "slices_per_second"}
SKIP = re.compile(r"(^|/)(run\.json|runtimes\.csv|checkpoint\.pt|report\.html|\.snakemake|logs|benchmarks)(/|$)|\.log$")


def files(root: Path) -> set[str]:
    found = set()
    for top in ("results", "smoke/results", "smoke/data", "data/synthetic"):
        base = root / top
        if base.is_dir():
            found |= {str(p.relative_to(root)) for p in base.rglob("*") if p.is_file()}
    return {f for f in found if not SKIP.search(f) and not f.startswith("smoke/smoke")}


def same_tree(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu())))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b))
    return a == b


def same_array(x: np.ndarray, y: np.ndarray) -> bool:
    """Equal arrays; a 0-d string holding a JSON run record is compared without its VOLATILE fields."""
    if x.shape == () and x.dtype.kind == "U" and y.dtype.kind == "U":
        try:
            rx, ry = json.loads(str(x)), json.loads(str(y))
        except ValueError:
            return str(x) == str(y)
        if isinstance(rx, dict) and isinstance(ry, dict):
            return ({k: v for k, v in rx.items() if k not in VOLATILE}
                    == {k: v for k, v in ry.items() if k not in VOLATILE})
    return x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")


def same(path_a: Path, path_b: Path) -> bool:
    name = path_a.name
    if name == "model.pt":
        load = lambda p: load_model_file(p)["state"]
        return same_tree(load(path_a), load(path_b))
    if name == "history.csv":
        drop = lambda p: pd.read_csv(p).drop(columns=["seconds"], errors="ignore")
        return drop(path_a).equals(drop(path_b))
    if name == "index.csv" and path_a.parent.name == "store":     # the slice store's: NPZ times differ
        drop = lambda p: pd.read_csv(p).drop(columns=["npz_mtime_ns"], errors="ignore")
        return drop(path_a).equals(drop(path_b))
    if path_a.suffix == ".npz":
        with np.load(path_a, allow_pickle=False) as za, np.load(path_b, allow_pickle=False) as zb:
            return (sorted(za.files) == sorted(zb.files)
                    and all(same_array(za[k], zb[k]) for k in za.files))
    return path_a.read_bytes() == path_b.read_bytes()


def main(before: str, after: str) -> int:
    a, b = Path(before), Path(after)
    fa, fb = files(a), files(b)
    bad = 0
    for f in sorted(fa):
        if f not in fb:
            print(f"missing in {b}: {f}")
            bad += 1
        elif not same(a / f, b / f):
            print(f"differs: {f}")
            bad += 1
    extra = sorted(fb - fa)
    for f in extra:
        print(f"only in {b}: {f}")
    print(f"compared {len(fa)} files: {bad} differ or are missing; {len(extra)} only in {b}")
    return 1 if bad or extra else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
