"""Check that two versions of the aggregation write the same outputs: run the report subcommands of both source
trees on the same inputs, each in its own copy, and compare every output file.

Inputs: a finished run's `results/` (default: the smoke run, /work/main/smoke; its scores, splits and data are
copied, never written), and/or the synthetic inputs of `bench_aggregate.py` at `--synthetic N` test slices (18
rows x 5 folds, tied scores). Per output: `identical` (same bytes), or for CSVs the largest difference of each
numeric column that differs and any text cell that differs; PNGs are compared by bytes.

    .venv/bin/python scripts/compare_aggregate.py --old-src /work/main/src --new-src src --synthetic 6000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_aggregate as bench  # noqa: E402


def smoke_files(results: Path) -> tuple[dict, list[str]]:
    """The report rules' input lists of a finished run, and its rows in Table 1's order."""
    rel = lambda ps: sorted(str(p.relative_to(results.parent)) for p in ps)  # noqa: E731
    files = {"scores": rel(results.glob("scores/*/fold-*[0-9].csv")), "maps": rel(results.glob("scores/*/*.maps.npz")),
             "loc": rel(results.glob("scores/*/*.loc.json")), "manifests": rel(results.glob("splits/fold-*.csv"))}
    rows = pd.read_csv(results / "table1.csv")["method"].tolist()
    return files, rows


def run_all(src: str, root: Path, files: dict, rows: list[str], bootstrap: int, threads: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    for stage, args in bench.stage_commands(files, bootstrap, rows, threads=threads).items():
        r = subprocess.run([sys.executable, "-m", "ichbench", *args], cwd=root, env=env, capture_output=True,
                           text=True)
        if r.returncode:
            raise SystemExit(f"{src}: {stage} failed:\n{r.stderr[-3000:]}")


def compare_csv(a: Path, b: Path) -> list[str]:
    x, y = pd.read_csv(a, keep_default_na=False), pd.read_csv(b, keep_default_na=False)
    if list(x.columns) != list(y.columns) or len(x) != len(y):
        return [f"shape/columns differ: {x.shape} {y.shape}"]
    out = []
    for c in x.columns:
        u, v = x[c], y[c]
        if (u.astype(str) == v.astype(str)).all():
            continue
        nu, nv = pd.to_numeric(u, errors="coerce"), pd.to_numeric(v, errors="coerce")
        if nu.notna().sum() == (u.astype(str) != "").sum() and (nu.isna() == nv.isna()).all():
            out.append(f"{c}: max |diff| {np.nanmax(np.abs(nu - nv)):.3g} in {int((u.astype(str) != v.astype(str)).sum())} cells")
        else:
            i = int(np.nonzero((u.astype(str) != v.astype(str)).to_numpy())[0][0])
            out.append(f"{c}: text differs, e.g. row {i}: {u.iloc[i]!r} vs {v.iloc[i]!r}")
    return out


def outputs(commands: dict) -> list[str]:
    """The files the commands write (the values of their --out* options)."""
    return sorted({args[i + 1] for args in commands.values() for i, a in enumerate(args[:-1]) if a.startswith("--out")})


def compare_trees(old: Path, new: Path, outs: list[str]) -> int:
    bad = 0
    for rel in outs:
        a, b = old / rel, new / rel
        rel = Path(rel)
        if not b.exists():
            print(f"MISSING  {rel}")
            bad += 1
        elif a.read_bytes() == b.read_bytes():
            print(f"identical {rel}")
        elif rel.suffix == ".csv":
            diffs = compare_csv(a, b)
            print(f"DIFFERS  {rel}: " + ("; ".join(diffs) if diffs else "same values, different text"))
            bad += bool(diffs)
        else:
            print(f"DIFFERS  {rel} (bytes)")
            bad += 1
    return bad


def check(label: str, make_inputs, old_src: str, new_src: str, bootstrap: int, threads=(0, 2)) -> int:
    with tempfile.TemporaryDirectory(prefix="cmpagg-") as tmp:
        roots = {}
        for which in ("old", "new"):
            root = roots[which] = Path(tmp) / which
            files, rows = make_inputs(root)
        for which, src, n in (("old", old_src, threads[0]), ("new", new_src, threads[1])):
            run_all(src, roots[which], files, rows, bootstrap, n)
        print(f"## {label}: old {old_src} vs new {new_src}, {bootstrap} bootstrap draws")
        return compare_trees(roots["old"], roots["new"], outputs(bench.stage_commands(files, bootstrap, rows)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-src", required=True, help="src/ folder of the reference version")
    ap.add_argument("--new-src", required=True, help="src/ folder of the version checked")
    ap.add_argument("--smoke", default="/work/main/smoke", help="a run folder holding results/ ('' to skip)")
    ap.add_argument("--synthetic", type=int, default=0, help="also synthetic inputs of N test slices (0: none)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, nargs=2, default=[0, 2], metavar=("OLD", "NEW"),
                    help="--threads of the table and strata stages per version (0: not passed, for versions without)")
    a = ap.parse_args(argv)
    bad = 0
    if a.smoke:
        src = Path(a.smoke) / "results"

        def smoke_inputs(root: Path):
            for part in ("scores", "splits", "data"):
                shutil.copytree(src / part, root / "results" / part)
            shutil.copy(src / "table1.csv", root / "results" / "table1.csv")     # the rows' order only
            return smoke_files(root / "results")

        bad += check(f"smoke run {a.smoke}", smoke_inputs, a.old_src, a.new_src, a.bootstrap, a.threads)
    if a.synthetic:
        def synthetic_inputs(root: Path):
            files = bench.write_inputs(root, a.synthetic)
            return files, bench.ROWS

        bad += check(f"synthetic, {a.synthetic} test slices", synthetic_inputs, a.old_src, a.new_src, a.bootstrap,
                     a.threads)
    print(json.dumps({"files_differing": bad}))
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
