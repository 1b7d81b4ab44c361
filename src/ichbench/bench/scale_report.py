"""The figures of `ichbench bench-scale` (bench.scale): per-core rates, growth between sizes, the full-size projection.

- growth: per stage, the cost (CPU s, wall s, peak memory) at the largest size over the smallest, against
  the ratio of the stage's items (1.0 x the item ratio = linear; `cpu_growth` is that quotient).
- projection: the measured CPU cost applied to the full dataset of the layout (CQ500: the paper's 88,808
  slices from about 190,000 files; RSNA 2019: 752,803 slices, one file each) on a 16-core node. With two
  sizes a stage's CPU seconds are fitted as fixed + items x marginal (the fixed part is start-up: the
  interpreter, imports), and the full size costs fixed + its items x marginal; with one size (or a
  marginal cost that is not positive, i.e. noise) it is the items over the per-core rate of the largest
  size. Index and preprocess spread over the files and shards (CPU s / 16); the other stages are one
  process each (train and score: one fold, one thread, one AE epoch; the five folds run side by side).
  A projection, assuming each stage stays linear; not a measurement.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

#: The full datasets the projection is for: slices of the cohort and files read by the index.
FULL_SIZE = {"cq500": {"name": "CQ500 (the paper's cohort)", "slices": 88_808, "files": 190_000},
             "rsna": {"name": "RSNA 2019 stage-2 train", "slices": 752_803, "files": 752_803}}
NODE_CORES = 16
PARALLEL_STAGES = ("write", "index", "preprocess")
COLUMNS = ("layout", "size", "stage", "items", "unit", "wall_s", "cpu_s", "per_core_per_s", "per_s",
           "peak_rss_mib", "slices", "files", "scans", "image_size", "workers", "threads")


def _by_size(rows: list[dict]) -> dict[int, dict[str, dict]]:
    out: dict[int, dict[str, dict]] = {}
    for r in rows:
        out.setdefault(r["size"], {})[r["stage"]] = r
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b and b > 0 and not math.isnan(b) and not math.isnan(a) else math.nan


def growth(rows: list[dict]) -> list[dict]:
    """Per stage, largest size over smallest: items, wall, CPU and peak-memory ratios, and CPU / items."""
    sizes = _by_size(rows)
    if len(sizes) < 2:
        return []
    lo, hi = sizes[min(sizes)], sizes[max(sizes)]
    out = []
    for stage, h in hi.items():
        s = lo.get(stage)
        if s is None:
            continue
        items = _ratio(h["items"], s["items"])
        cpu = _ratio(h["cpu_s"], s["cpu_s"])
        out.append({"stage": stage, "from": min(sizes), "to": max(sizes), "items_ratio": items,
                    "wall_ratio": _ratio(h["wall_s"], s["wall_s"]), "cpu_ratio": cpu,
                    "rss_ratio": _ratio(h["peak_rss_mib"], s["peak_rss_mib"]), "cpu_growth": _ratio(cpu, items)})
    return out


def _fit(small: dict | None, big: dict) -> tuple[float, float | None]:
    """CPU s = fixed + items x marginal through the two sizes -> (fixed >= 0, marginal) or (0, None)."""
    if small is None or big["items"] <= small["items"]:
        return 0.0, None
    marginal = (big["cpu_s"] - small["cpu_s"]) / (big["items"] - small["items"])
    if not marginal > 0:
        return 0.0, None
    return max(0.0, big["cpu_s"] - marginal * big["items"]), marginal


def projection(rows: list[dict], workers: int = 1) -> list[dict]:
    """The per-core rates of the largest size applied to the layout's full dataset on a 16-core node."""
    if not rows:
        return []
    sizes = _by_size(rows)
    big, small = sizes[max(sizes)], sizes[min(sizes)]
    full = FULL_SIZE[rows[0]["layout"]]
    out = []
    for stage, r in big.items():
        if stage == "write":
            continue            # the synthetic cohort's writing is no stage of a real run
        scale = full["files"] / r["files"] if r["unit"] == "files" else full["slices"] / r["slices"]
        items = r["items"] * scale
        fixed, marginal = _fit(small.get(stage), r)
        if marginal is not None:
            cpu = fixed + items * marginal
        else:
            cpu = items / r["per_core_per_s"] if r["per_core_per_s"] > 0 else math.nan
        cores = NODE_CORES if stage in PARALLEL_STAGES else 1
        out.append({"dataset": full["name"], "stage": stage, "items": round(items), "unit": r["unit"],
                    "per_core_per_s": r["per_core_per_s"],
                    "marginal_per_core_per_s": 1 / marginal if marginal else math.nan, "fixed_cpu_s": fixed,
                    "cpu_h": cpu / 3600, "cores": cores, "wall_h_16_cores": cpu / cores / 3600})
    total = sum(p["wall_h_16_cores"] for p in out)
    out.append({"dataset": full["name"], "stage": "all (one after the other)", "items": "", "unit": "",
                "per_core_per_s": "", "marginal_per_core_per_s": "", "fixed_cpu_s": "",
                "cpu_h": sum(p["cpu_h"] for p in out), "cores": NODE_CORES, "wall_h_16_cores": total})
    return out


def _fmt(v, digits: int = 1) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def format_tables(result: dict) -> str:
    """The three Markdown tables (per size and stage; growth; projection) with the machine line."""
    lines = [f"bench-scale, layout {result['layout']}, {result['started']}, {result['machine']}, load average "
             f"{result['load_average'][0]} -> {result['load_average'][1]}", "",
             "| size | stage | items | wall s | CPU s | per core / s | peak MiB |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['size']:,} | {r['stage']} | {r['items']:,} {r['unit']} | {_fmt(r['wall_s'])} | "
                     f"{_fmt(r['cpu_s'])} | {_fmt(r['per_core_per_s'])} | {_fmt(r['peak_rss_mib'], 0)} |")
    if result["growth"]:
        g0 = result["growth"][0]
        lines += ["", f"Growth {g0['from']:,} -> {g0['to']:,} slices (cost ratio / items ratio; 1.0 = linear):", "",
                  "| stage | items x | wall x | CPU x | peak memory x | CPU x / items x |", "|---|---|---|---|---|---|"]
        for g in result["growth"]:
            lines.append(f"| {g['stage']} | {_fmt(g['items_ratio'], 2)} | {_fmt(g['wall_ratio'], 2)} | "
                         f"{_fmt(g['cpu_ratio'], 2)} | {_fmt(g['rss_ratio'], 2)} | {_fmt(g['cpu_growth'], 2)} |")
    if result["projection"]:
        lines += ["", f"PROJECTION (not measured) to {result['projection'][0]['dataset']} on a {NODE_CORES}-core "
                      "node: CPU s = fixed + items x marginal, fitted through the sizes:", "",
                  "| stage | items | per core / s (largest size) | marginal per core / s | fixed CPU s | CPU h | "
                  "cores | wall h |", "|---|---|---|---|---|---|---|---|"]
        for p in result["projection"]:
            items = f"{p['items']:,} {p['unit']}" if p["unit"] else ""
            lines.append(f"| {p['stage']} | {items} | {_fmt(p['per_core_per_s'])} | "
                         f"{_fmt(p['marginal_per_core_per_s'])} | {_fmt(p['fixed_cpu_s'])} | {_fmt(p['cpu_h'], 2)} | "
                         f"{p['cores']} | {_fmt(p['wall_h_16_cores'], 2)} |")
    return "\n".join(lines)


def _finite(v):
    """NaN -> None, through dicts and lists (JSON has no NaN)."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return None if isinstance(v, float) and math.isnan(v) else v


def write(result: dict, stem: Path) -> None:
    """<stem>.csv (one row per size and stage), <stem>.json (everything), <stem>.md (the printed tables)."""
    stem = Path(stem)
    with open(stem.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(result["rows"])
    stem.with_suffix(".json").write_text(json.dumps(_finite(result), indent=1) + "\n")
    stem.with_suffix(".md").write_text(format_tables(result) + "\n")
