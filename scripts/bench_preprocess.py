"""Preprocessing against a bare decode of the same files: CPU seconds, peak memory and header-indexing rate.

Issue 24 item 1. For the real CQ500-CT-0 series (JPEG Lossless, ../shared/data/cq500/dicom) and for a
synthetic RSNA-like folder (one uncompressed file per slice, int16 stored values with RescaleIntercept
-1024, written here from the real series' HU), it runs in alternating pairs, each in its own process:

    ichbench : `python -m ichbench preprocess --data IDX --out OUT --workers 1 --store STORE` (start-up included;
               `--store always` also writes the slice store, which a cohort of up to 4 GB of slices does not need)
    bare     : a script that imports pydicom and numpy, reads every file of the chosen series with
               pydicom.dcmread and computes pixel_array * RescaleSlope + RescaleIntercept as float32

and prints each process's CPU seconds (user + system) and peak resident memory (ru_maxrss of that child,
from /usr/bin/time), the median ratio over the pairs, and the header index's files per CPU-second
(dicom_index.index_folder, one worker, in this process, median of 3, warm page cache). `--before SRC`
adds a third run per pair of the same command with PYTHONPATH=SRC (e.g. /work/main/src, the code
before the change). The load average is printed before and after: the figures move on a shared machine.

The compiled sweep (inputs/sweep_jit.py, numba) is used where preprocess decides to (`--jit auto`, from
JIT_MIN_SLICES slices a process) or always / never (`--jit on` / `off`: ICHBENCH_JIT for the ichbench runs);
numba's cache is filled by one untimed run first. `--cold` adds a run per pair with the sweep on and an
empty numba cache (a fresh NUMBA_CACHE_DIR: it compiles), the first run on a new machine.

    .venv/bin/python scripts/bench_preprocess.py [--pairs 3] [--rsna-slices 238] [--rsna-series 1]
                                                 [--before /work/main/src] [--jit auto|on|off] [--cold]
                                                 [--store auto|always]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BARE = """
import sys, warnings
import numpy as np, pydicom
for path in open(sys.argv[1]).read().split():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * np.float32(ds.RescaleSlope) + np.float32(ds.RescaleIntercept)
"""


def run_child(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run `cmd` under /usr/bin/time: its CPU seconds (user + system) and peak resident memory (MiB).

    (Not os.wait4 from here: Linux keeps a child's high-water mark from before its exec, i.e. this
    process's size; /usr/bin/time is small.)"""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        proc = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", t.name, *cmd], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')[-2000:]}")
        user, system, kib = t.read().split()[-3:]
    return float(user) + float(system), float(kib) / 1024.0


def write_rsna_like(index_dir: Path, out: Path, n_slices: int, n_series: int = 1) -> None:
    """One uncompressed file per slice, RSNA 2019 style (flat folder, ID_<hex>.dcm, int16, intercept -1024),
    its pixels the real series' HU (repeated along z when more slices are asked for), in `n_series` series of
    as many slices each, one patient each (RSNA 2019: ~35 slices a series)."""
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from ichbench.cache.preprocess import read_index
    from ichbench.inputs import dicomio

    index = read_index(index_dir / "index.csv")
    chosen = __import__("pandas").read_csv(index_dir / "series_candidates.csv", dtype=str)
    suid = chosen[chosen["selected"].str.lower() == "true"]["series_uid"].iloc[0]
    plan = dicomio.plan_series(index[index["series_uid"] == suid])
    slices = [hu.copy() for _, hu in dicomio.iter_hu(plan)]
    out.mkdir(parents=True, exist_ok=True)
    for k in range(n_slices):
        s = k * n_series // n_slices                       # the series of slice k, and its first slice
        z = k - -(-s * n_slices // n_series)
        study = generate_uid(entropy_srcs=["bench", "study", str(s)])
        series = generate_uid(entropy_srcs=["bench", "series", str(s)])
        hu = slices[z % len(slices)]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid(entropy_srcs=["bench", str(k)])
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, sop, "CT"
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = f"ID_bench{s:05d}", study, series
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows, ds.Columns = hu.shape
        ds.PixelSpacing = ["0.488281", "0.488281"]
        ds.SliceThickness = "5"
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = ["-125", "-125", f"{5.0 * z:.1f}"]
        ds.InstanceNumber = k + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.WindowCenter, ds.WindowWidth = "40", "80"
        ds.PixelData = np.clip(np.rint(hu + 1024), -32768, 32767).astype("<i2").tobytes()
        ds.save_as(out / f"ID_{int(sop.split('.')[-1]) % 16 ** 9:09x}.dcm", enforce_file_format=True)
    del pydicom


def index_rate(folder: Path, repeats: int = 3) -> tuple[float, float, int]:
    """Header index of `folder` with one worker: (files per CPU-second, files per wall second, files)."""
    from ichbench.inputs import dicom_index

    cpu, wall = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        index, rejected = dicom_index.index_folder(folder, workers=1)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    n = len(index) + len(rejected)
    return n / statistics.median(cpu), n / statistics.median(wall), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dicom", default=str(ROOT.parent / "shared/data/cq500/dicom"), help="the real DICOM folder")
    ap.add_argument("--pairs", type=int, default=3, help="alternating pairs per dataset (median reported)")
    ap.add_argument("--rsna-slices", type=int, default=238, help="slices of the synthetic RSNA-like folder")
    ap.add_argument("--rsna-series", type=int, default=1, help="series (one patient each) they are split into")
    ap.add_argument("--before", help="PYTHONPATH of the code to compare with (a third run per pair)")
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    ap.add_argument("--jit", choices=["auto", "on", "off"], default="auto",
                    help="the compiled sweep in the ichbench runs")
    ap.add_argument("--store", choices=["auto", "always"], default="auto",
                    help="ichbench preprocess --store: auto writes no slice store for a cohort that fits 4 GB")
    ap.add_argument("--cold", action="store_true",
                    help="add a run per pair with the sweep on and an empty numba cache")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from ichbench.bench.machine import machine
    from ichbench.cache.preprocess import build_index

    work = Path(a.work or tempfile.mkdtemp(prefix="bench_preprocess_"))
    load0 = os.getloadavg()
    print(f"# bench_preprocess  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  {machine()}")
    print(f"# load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; ichbench preprocess --store {a.store}")
    datasets = {"CQ500-CT-0 (JPEG Lossless)": Path(a.dicom)}
    real_idx = work / "real_index"
    real_idx.mkdir(parents=True, exist_ok=True)
    build_index(a.dicom, real_idx / "index.csv", real_idx / "series_candidates.csv", real_idx / "rejected.csv")
    rsna = work / "rsna_like"
    if not rsna.exists():
        write_rsna_like(real_idx, rsna, a.rsna_slices, a.rsna_series)
    datasets[f"RSNA-like ({a.rsna_slices} uncompressed files, {a.rsna_series} series)"] = rsna
    env_ours = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env_ours.pop("ICHBENCH_JIT", None)
    if a.jit != "auto":
        env_ours["ICHBENCH_JIT"] = "1" if a.jit == "on" else "0"
    rows = []
    for name, folder in datasets.items():
        idx = work / f"idx_{abs(hash(name)) % 10 ** 6}"
        idx.mkdir(exist_ok=True)
        cand = build_index(folder, idx / "index.csv", idx / "series_candidates.csv", idx / "rejected.csv")
        import pandas as pd

        files = pd.read_csv(idx / "index.csv", dtype=str)
        chosen = set(cand.loc[cand["selected"].astype(bool), "series_uid"])
        listing = idx / "files.txt"
        listing.write_text("\n".join(files.loc[files["series_uid"].isin(chosen), "path"]))
        n_files = len(listing.read_text().split())
        kinds = {"ichbench": env_ours, "bare": env_ours}
        if a.before:
            kinds["before"] = dict(os.environ, PYTHONPATH=a.before)
        if a.cold:
            kinds["cold"] = dict(env_ours, ICHBENCH_JIT="1")
        ours = [sys.executable, "-m", "ichbench", "preprocess", "--data", str(idx), "--out", str(work / "warm"),
                "--workers", "1", "--store", a.store]
        run_child(ours, dict(env_ours, ICHBENCH_JIT="1"))          # numba's cache filled, untimed
        if a.before:     # the same for the other tree (a cold cache would send it down the numpy path)
            run_child(ours[:-2], dict(kinds["before"], ICHBENCH_JIT="1"))
        got = {k: [] for k in kinds}
        for p in range(a.pairs):
            order = list(kinds) if p % 2 == 0 else list(reversed(kinds))
            for kind in order:
                out = work / f"out_{kind}"
                subprocess.run(["rm", "-rf", str(out)], check=True)
                env = kinds[kind]
                if kind == "cold":
                    env = dict(env, NUMBA_CACHE_DIR=tempfile.mkdtemp(prefix="numba_cold_", dir=work))
                if kind == "bare":
                    cmd = [sys.executable, "-c", BARE, str(listing)]
                else:
                    cmd = [sys.executable, "-m", "ichbench", "preprocess", "--data", str(idx), "--out", str(out),
                           "--workers", "1"] + (["--store", a.store] if kind != "before" else [])
                got[kind].append(run_child(cmd, env))
        ratio = statistics.median(o[0] / b[0] for o, b in zip(got["ichbench"], got["bare"]))
        cpu = {k: statistics.median(c for c, _ in v) for k, v in got.items()}
        rss = {k: max(m for _, m in v) for k, v in got.items()}
        per_cpu, per_wall, n_idx = index_rate(folder)
        rows.append((name, n_files, cpu, rss, ratio, per_cpu, per_wall, n_idx, got))
    load1 = os.getloadavg()
    print(f"# load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print()
    head = "| series | slices | ichbench CPU s | bare CPU s | ratio (median of pairs) | ichbench peak MiB | bare peak MiB |"
    if a.before:
        head += " before CPU s | before peak MiB |"
    if a.cold:
        head += " cold-cache CPU s | cold ratio |"
    head += " index files / CPU-s | index files / s |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, n, cpu, rss, ratio, per_cpu, per_wall, n_idx, got in rows:
        line = (f"| {name} | {n} | {cpu['ichbench']:.2f} | {cpu['bare']:.2f} | {ratio:.2f} | {rss['ichbench']:.0f} |"
                f" {rss['bare']:.0f} |")
        if a.before:
            line += f" {cpu['before']:.2f} | {rss['before']:.0f} |"
        if a.cold:
            cold = statistics.median(o[0] / b[0] for o, b in zip(got["cold"], got["bare"]))
            line += f" {cpu['cold']:.2f} | {cold:.2f} |"
        line += f" {per_cpu:.0f} | {per_wall:.0f} |"
        print(line)
    print()
    for name, *_, got in rows:
        print(f"# {name}: every run (CPU s, peak MiB): " +
              "; ".join(f"{k} " + ", ".join(f"{c:.2f}/{m:.0f}" for c, m in v) for k, v in got.items()))


if __name__ == "__main__":
    main()
