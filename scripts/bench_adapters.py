"""Index and preprocessing time per 1,000 slices for each dataset adapter's files (docs/performance.md).

Writes small copies of each dataset in its shipped layout with the tests' format writers (512 x 512 slices,
tests/dataset_formats.py), then times, in this one process and alternating the datasets, the header index
(`build_index` / the NIfTI index; for hemseg also its file list and the masks onto the slices, the rule
dataset_labels) and the cache (`preprocess_shard`, 128 px, 3 windows) on one core, and
the same for the real CQ500-CT-0 series of ../shared/data as the baseline (ratios against it).

    .venv/bin/python scripts/bench_adapters.py [--rounds 2] [--slices 30]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from dataset_formats import write_bhsd, write_ctich, write_hemseg, write_instance, write_rsna  # noqa: E402

from ichbench.cache.preprocess import build_index, preprocess_shard  # noqa: E402
from ichbench.datasets import adapter  # noqa: E402
from ichbench.inputs.nifti import build_index as build_nifti_index  # noqa: E402
from ichbench.inputs.windowing import PAPER_WINDOWS  # noqa: E402


def _write(name: str, root: Path, n: int) -> dict:
    if name == "rsna":
        write_rsna(root, [dict(patient=i, study=i, n=n, shape=(512, 512), bleed={3},
                               mode=("uint12", "int16", "needs_fix")[i % 3]) for i in range(4)])
    elif name == "ctich":
        write_ctich(root, {49 + i: dict(n=n, bleed={3}) for i in range(3)}, size=512)
    elif name == "bhsd":
        write_bhsd(root, {f"ID_{i:08x}_ID_{i:010x}": dict(n=n, bleed={3}) for i in range(3)}, size=512)
    elif name == "instance":
        write_instance(root, {1 + i: dict(n=n, bleed={3}) for i in range(3)}, size=512)
    elif name == "hemseg":      # 4 HemSeg scans among 8 RSNA studies: only the 4 listed are indexed
        studies = [dict(patient=i, study=i, n=n, shape=(512, 512), bleed={3}) for i in range(8)]
        info = write_rsna(root / "rsna", studies)
        write_hemseg(root / "labels", studies[::2], info)
        return {"name": name, "root": str(root / "labels"), "rsna_root": str(root / "rsna")}
    return {"name": name, "root": str(root)}


def _time(ds: dict, work: Path, scan_key: str) -> tuple[float, float, int]:
    r = adapter.resolve(ds).dataset if ds.get("name") else ds
    work.mkdir(parents=True, exist_ok=True)
    files = [work / f for f in ("index.csv", "series_candidates.csv", "rejected_index.csv")]
    t0 = time.perf_counter()
    listed = None
    if ds.get("name") == "hemseg":        # its file list (rule dataset_files) and masks onto slices (dataset_labels)
        listed = work / "index_files.txt"
        adapter.get("hemseg").index_files(ds, listed)
    if r["source"] == "nifti":
        build_nifti_index(r["nifti_dir"], *files, masks_dir=r.get("nifti_masks_dir"), min_slices=4)
    else:
        build_index(r["dicom_dir"], *files, min_slices=4, min_extent_mm=20, scan_key=scan_key, file_list=listed)
    if listed:
        adapter.get("hemseg").derive(ds, files[0], work / "dataset")
    t1 = time.perf_counter()
    table = preprocess_shard(files[0], files[1], work / "shard-0", shard=0, n_shards=1, windows=PAPER_WINDOWS,
                             size=128)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, int(table["n_slices"].sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds over the datasets")
    p.add_argument("--slices", type=int, default=30, help="slices per scan written")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets = {name: _write(name, tmp / name, a.slices) for name in ("rsna", "ctich", "bhsd", "instance", "hemseg")}
        cq = ROOT.parent / "shared" / "data" / "cq500" / "dicom" / "CQ500-CT-0"
        if cq.is_dir():
            sets = {"CQ500-CT-0 (baseline)": {"source": "dicom", "dicom_dir": str(cq)}, **sets}
        res: dict[str, list] = {k: [] for k in sets}
        for r in range(a.rounds):
            for name, ds in sets.items():
                res[name].append(_time(ds, tmp / f"w{r}" / name.split()[0],
                                       adapter.get(ds["name"]).scan_key if ds.get("name") else "patient"))
    base = None
    print(f"{'files':24s} {'slices':>6s} {'index s/1000':>13s} {'cache s/1000':>13s} {'x baseline':>11s}")
    for name, runs in res.items():
        n = runs[0][2]
        idx = min(r[0] for r in runs) / n * 1000
        cache = min(r[1] for r in runs) / n * 1000
        if base is None:
            base = (idx, cache)
        print(f"{name:24s} {n:6d} {idx:13.1f} {cache:13.1f} {idx / base[0]:5.2f} {cache / base[1]:5.2f}")


if __name__ == "__main__":
    main()
