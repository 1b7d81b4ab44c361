"""Preprocessing by two versions of the code on the same folders: every cached output must be the same.

For each DICOM folder: one header index (`ichbench index` by the new code, series of any length allowed),
then `ichbench preprocess` with PYTHONPATH=OLD and with PYTHONPATH=NEW into separate folders, and a
comparison of every NPZ (the same members in the same order, each array's dtype, shape and bytes),
series.csv, rejected.csv and the slice store (its arrays, and its index.csv but for the NPZs' modification
stamps). Prints one line per folder; exits 1 if any differs.

    .venv/bin/python scripts/compare_preprocess.py --old /tmp/old/src [--new src] FOLDER...
        (default folders: the DICOM folders of ../shared/data and a synthetic RSNA-like series)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT = ["cq500/dicom", "rsna/stage_2_test_images", "dcm_qa_ct/GE_human_head_tilt",
           "dcm_qa_ct/Philips_phantom_S2010", "single_slices"]


def run(src: str, *args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
    env.pop("ICHBENCH_JIT", None)
    proc = subprocess.run([sys.executable, "-m", "ichbench", *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"ichbench {' '.join(args)} failed with {src}:\n{proc.stderr[-3000:]}")


def same_npz(a: Path, b: Path) -> str | None:
    with np.load(a) as za, np.load(b) as zb:
        if za.files != zb.files:
            return f"members {za.files} != {zb.files}"
        for k in za.files:
            x, y = za[k], zb[k]
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                return f"member {k} differs"
    return None


def compare(old: Path, new: Path) -> str | None:
    names = sorted(p.name for p in old.iterdir() if p.is_file())
    if names != sorted(p.name for p in new.iterdir() if p.is_file()):
        return f"files {names} != {sorted(p.name for p in new.iterdir() if p.is_file())}"
    for name in names:
        if name.endswith(".npz"):
            why = same_npz(old / name, new / name)
            if why:
                return f"{name}: {why}"
        elif (old / name).read_bytes() != (new / name).read_bytes():
            return f"{name} differs"
    so, sn = old / "store", new / "store"
    if so.exists() != sn.exists():
        return "a slice store on one side only"
    if so.exists():
        import pandas as pd

        io, inn = pd.read_csv(so / "index.csv"), pd.read_csv(sn / "index.csv")
        keep = [c for c in io.columns if c != "npz_mtime_ns"]
        if list(io.columns) != list(inn.columns) or not io[keep].equals(inn[keep]):
            return "store index.csv differs (beyond the NPZ stamps)"
        for f in sorted(p.name for p in so.iterdir() if p.suffix == ".npy"):
            if (so / f).read_bytes() != (sn / f).read_bytes():
                return f"store {f} differs"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="PYTHONPATH of the former code (e.g. a git archive's src)")
    ap.add_argument("--new", default=str(ROOT / "src"))
    ap.add_argument("--rsna-slices", type=int, default=300, help="slices of the synthetic RSNA-like series (0: none)")
    ap.add_argument("folders", nargs="*")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compare_preprocess_"))
    folders = [Path(f) for f in a.folders] or [SHARED / f for f in DEFAULT if (SHARED / f).exists()]
    if a.rsna_slices and not a.folders and (SHARED / "cq500/dicom").exists():
        sys.path.insert(0, str(ROOT / "scripts"))
        sys.path.insert(0, a.new)
        from bench_preprocess import write_rsna_like
        from ichbench.cache.preprocess import build_index

        real = work / "real_index"
        real.mkdir()
        build_index(SHARED / "cq500/dicom", real / "index.csv", real / "series_candidates.csv", real / "rejected.csv")
        write_rsna_like(real, work / "rsna_like", a.rsna_slices)
        folders.append(work / "rsna_like")
    bad = 0
    for k, folder in enumerate(folders):
        idx = work / f"index{k}"
        run(a.new, "index", "--dicom-dir", str(folder), "--out", str(idx), "--min-slices", "1", "--min-extent-mm", "0")
        outs = {}
        for side, src in (("old", a.old), ("new", a.new)):
            outs[side] = work / f"{side}{k}"
            run(src, "preprocess", "--data", str(idx), "--out", str(outs[side]), "--workers", "1")
        why = compare(outs["old"], outs["new"])
        n = sum(1 for _ in outs["new"].glob("*.npz"))
        print(f"{folder}: {n} series, {'same' if why is None else 'DIFFERENT: ' + why}")
        bad += why is not None
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
