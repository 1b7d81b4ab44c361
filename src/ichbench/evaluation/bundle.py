"""The results bundle (`ichbench-results.json`): a run's results and what they were run on, without paths, hosts, users or patients; merging bundles."""
from __future__ import annotations

import getpass
import hashlib
import json
import math
import re
import socket
from pathlib import Path
from typing import Any

import pandas as pd

SCHEMA = "ichbench-results/1"
# what must agree before two bundles' numbers go side by side (the keys of bundle["comparability"])
COMPARED = ("cohort", "folds", "protocol", "label_source", "bootstrap", "scan_aggregation")
# dataset keys naming files or folders: the bundle says only whether each was given
DATASET_INPUTS = ("dicom_dir", "labels", "reads", "slice_labels", "gt_masks_dir", "bhx", "nifti_dir",
                  "nifti_masks_dir", "nifti_labels")
PATH_KEY = re.compile(r"(^|_)(path|paths|dir|dirs|directory|file|files)($|_)", re.I)
FILE_SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,5}(\.gz)?$")
REDACTED = "<redacted>"
PATH_REMOVED = "<path removed>"
STR_COLUMNS = {"folds_used": str, "folds_one_class": str, "folds_note": str, "notes": str}


class BundleMismatch(ValueError):
    """Bundles whose cohort, folds or evaluation settings differ, put side by side without being allowed to."""


def _digest(rows) -> str:
    text = "\n".join("\t".join(str(v) for v in row) for row in sorted(rows))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def assignment_digests(assignment: pd.DataFrame) -> dict[str, str]:
    """Digests of the cohort (sorted patient, scan label pairs) and of the folds (patient, test fold, val folds)."""
    rows = [[_cell(v) for v in r] for r in assignment[["patient_id", "scan_label", "test_fold", "val_folds"]]
            .itertuples(index=False)]
    return {"cohort": _digest(r[:2] for r in rows), "folds": _digest([r[0], r[2], r[3]] for r in rows)}


def records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    """A table as JSON records (NaN -> null)."""
    if frame is None:
        return []
    return json.loads(frame.to_json(orient="records", double_precision=10))


def read_runs(paths) -> list[dict[str, Any]]:
    """The run records (run.json) of the trained models, each with its fold from the `fold-K` folder."""
    runs = []
    for path in paths:
        record = json.loads(Path(path).read_text())
        m = re.fullmatch(r"fold-(\d+)", Path(path).parent.name)
        runs.append({**record, "fold": int(m.group(1)) if m else None})
    return runs


def row_records(runs: list[dict[str, Any]], methods: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per row: its resolved hyper-parameters, code digest, epochs and training commit per fold."""
    by_row: dict[str, list[dict]] = {}
    for run in sorted(runs, key=lambda r: (r.get("fold") is None, r.get("fold") or 0)):
        by_row.setdefault(run["method"], []).append(run)
    order = [m for m in (methods or []) if m in by_row] + sorted(set(by_row) - set(methods or []))
    out = {}
    for name in order:
        folds = by_row[name]
        params = [json.dumps(r.get("params"), sort_keys=True) for r in folds]
        digests = sorted({r.get("code_digest") for r in folds if r.get("code_digest")})
        out[name] = {
            "group": folds[0].get("group"), "params": folds[0].get("params"),
            "params_agree_over_folds": len(set(params)) == 1,
            "code_digest": digests[0] if len(digests) == 1 else digests,
            "folds": [r.get("fold") for r in folds], "epochs": [r.get("epochs") for r in folds],
            "seed": folds[0].get("seed"), "git_commit": sorted({str(r.get("git_commit")) for r in folds}),
            "train_seconds": round(sum(r.get("train_seconds") or 0 for r in folds), 1),
        }
        if len(set(params)) > 1:
            out[name]["params_by_fold"] = [r.get("params") for r in folds]
    return out


def environments(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct training environments of the runs (Python, torch, CUDA, cuDNN, GPU, device), with their rows."""
    keys = ("python", "torch", "cuda", "cudnn", "gpu", "device")
    envs: dict[str, dict] = {}
    for run in runs:
        env = {k: run.get(k) for k in keys}
        entry = envs.setdefault(json.dumps(env, sort_keys=True, default=str), {**env, "rows": [], "runs": 0})
        entry["runs"] += 1
        if run["method"] not in entry["rows"]:
            entry["rows"].append(run["method"])
    return list(envs.values())


def dataset_facts(dataset: dict[str, Any], cohort: pd.DataFrame | None) -> dict[str, Any]:
    """The dataset adapter and its facts: the config's `dataset` block without its paths, and the cohort counts."""
    facts = {"adapter": dataset.get("source")}
    facts.update({k: v for k, v in dataset.items() if k not in DATASET_INPUTS and k != "source"})
    facts["inputs_given"] = {k.removesuffix("_dir"): bool(dataset.get(k)) for k in DATASET_INPUTS if k in dataset}
    if cohort is not None:
        counts = [c for c in cohort.columns if c not in ("protocol", "label_source")]
        facts["counts"] = records(cohort[counts])
    return facts


def _pathlike(s: str) -> bool:
    if s.startswith(("/", "~", "\\", "file:")) or re.match(r"^[A-Za-z]:[\\/]", s):
        return True
    if ("/" in s or "\\" in s) and not re.search(r"\s", s):
        if FILE_SUFFIX.search(s):
            return True
        try:
            return Path(s).exists()
        except OSError:
            return False
    return False


def sanitize(obj, hidden: list[str] | None = None):
    """Drop keys named like paths, replace path-like strings, and redact the host, user and any `hidden` string."""
    words = [socket.gethostname(), getpass.getuser(), *(hidden or [])]
    words = [w for w in words if w and len(w) > 1 and not w.isdigit()]   # numeric IDs would hit the numbers
    pattern = re.compile("|".join(rf"(?<![\w-]){re.escape(w)}(?![\w-])" for w in sorted(set(words), key=len,
                                                                                       reverse=True)))

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if not PATH_KEY.search(str(k))}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, str):
            if _pathlike(v):
                return PATH_REMOVED
            return pattern.sub(REDACTED, v) if words else v
        return v

    return clean(obj)


def build_bundle(*, table: pd.DataFrame, ci: pd.DataFrame | None, per_fold: pd.DataFrame | None, runs: list[dict],
                 assignment: pd.DataFrame, cohort: pd.DataFrame | None, settings: dict[str, Any],
                 software: dict[str, Any]) -> dict[str, Any]:
    """The bundle of one run, sanitised; `settings`: protocol, label_source, dataset, table, rows (from the config)."""
    digests = assignment_digests(assignment)
    t = settings.get("table") or {}
    methods = settings.get("rows") or list(table["method"])
    bundle = {
        "schema": SCHEMA,
        "comparability": {
            **digests, "protocol": settings.get("protocol"), "label_source": settings.get("label_source"),
            "bootstrap": {"draws": t.get("bootstrap"), "seed": t.get("seed")},
            "scan_aggregation": {"rule": t.get("scan_aggregation"), "top_k": t.get("scan_top_k")},
        },
        "software": software,
        "environment": environments(runs),
        "dataset": dataset_facts(settings.get("dataset") or {}, cohort),
        "settings": {k: v for k, v in settings.items() if k not in ("dataset", "protocol", "label_source")},
        "rows": row_records(runs, methods),
        "table1": records(table),
        "table1_ci": records(ci),
        "per_fold": records(per_fold),
    }
    return sanitize(bundle, hidden=sorted(set(assignment["patient_id"].astype(str))))


def write_bundle(path: str | Path, **parts) -> dict[str, Any]:
    """Build the bundle of one run (see `build_bundle`) and write it as JSON."""
    bundle = build_bundle(**parts)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(bundle, indent=1) + "\n")
    return bundle


def read_bundle(path: str | Path) -> dict[str, Any]:
    """A bundle from its file; a file that is not one fails naming it."""
    try:
        bundle = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a results bundle ({exc})") from None
    if not isinstance(bundle, dict) or bundle.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a results bundle (schema {SCHEMA!r} expected)")
    return bundle


def differences(bundles: dict[str, dict]) -> list[str]:
    """What differs between the bundles' cohorts, folds and evaluation settings, one line per key."""
    lines = []
    for key in COMPARED:
        values = {name: b["comparability"].get(key) for name, b in bundles.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            lines.append(f"{key}: " + "; ".join(f"{n} = {json.dumps(v, sort_keys=True)}" for n, v in values.items()))
    return lines


def _ci_columns(bundle: dict) -> pd.DataFrame:
    ci = pd.DataFrame(bundle.get("table1_ci") or [])
    if ci.empty or not {"level", "protocol", "metric"} <= set(ci.columns):
        return pd.DataFrame(columns=["method"])
    main = ci[(ci["level"] == "slice") & (ci["protocol"] == bundle["comparability"].get("protocol"))
              & ci["metric"].isin(["AUC", "AP"])]
    wide = main.pivot_table(index="method", columns="metric", values=["ci_low", "ci_high"], aggfunc="first")
    wide.columns = [f"{metric}_{side}" for side, metric in wide.columns]
    return wide.reset_index()


def merge_bundles(bundles: dict[str, dict], allow_different: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Every bundle's Table 1 rows in one table (`source` column); refused on differing digests unless allowed."""
    diffs = differences(bundles)
    if diffs and not allow_different:
        keys = ", ".join(d.split(":")[0] for d in diffs)
        raise BundleMismatch(f"the bundles differ in {keys}; their numbers are not comparable side by side "
                             "(--allow-different-cohorts puts them together anyway):\n  " + "\n  ".join(diffs))
    frames = []
    for name, bundle in bundles.items():
        table = pd.DataFrame(bundle.get("table1") or [])
        if table.empty:
            continue
        ci = _ci_columns(bundle)
        table = table.merge(ci, on="method", how="left") if len(ci.columns) > 1 else table
        rows = bundle.get("rows") or {}
        table["code_digest"] = table["method"].map(lambda m: _cell_digest(rows.get(m, {}).get("code_digest")))
        table["cohort"] = bundle["comparability"].get("cohort", "")[:19]
        table["folds_digest"] = bundle["comparability"].get("folds", "")[:19]
        table.insert(0, "source", name)
        frames.append(table)
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["source"])
    return merged, diffs


def _cell_digest(value) -> str:
    return " ".join(value) if isinstance(value, list) else (value or "")


def source_names(paths) -> list[str]:
    """A short name per bundle file: its stem, or its folder and stem where stems repeat."""
    paths = [Path(p) for p in paths]
    names = [p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem for p in paths]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def merged_markdown(merged: pd.DataFrame, diffs: list[str]) -> str:
    """The merged table as Markdown, with the differences between the bundles above it."""
    lines = ["# Merged results", ""]
    if diffs:
        lines += ["**Not comparable side by side** - the bundles differ in:", ""] + [f"- {d}" for d in diffs] + [""]
    else:
        lines += ["Same cohort, folds, protocol, label source, bootstrap and scan aggregation in every bundle.", ""]
    cols = [c for c in ("source", "row", "group", "AUC", "AUC_ci_low", "AUC_ci_high", "AP", "AP_ci_low",
                        "AP_ci_high", "code_digest") if c in merged.columns]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in merged[cols].itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.1f}"
    return str(v)
