"""Subcommands of external validation (evaluation.external): an external set's manifest and its results table."""
from __future__ import annotations

import json
import logging
from pathlib import Path


def cmd_external_manifest(a) -> None:
    import pandas as pd

    from ..cohort import external, splits
    from ..inputs import dicomio, rejections

    ds = json.loads(a.dataset)
    where = a.out
    cohort, problems = external.external_cohort(a.shards, ds, label_source=a.label_source, scan_key=a.scan_key,
                                                patients=a.patients, scan_info=a.scan_info, excluded=a.excluded,
                                                min_area_mm2=a.min_hemorrhage_area_mm2)
    rejected = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in a.rejected_in if Path(p).exists()]
    problems = rejections.explain_unlabelled_scans(problems, pd.concat(rejected, ignore_index=True) if rejected
                                                   else pd.DataFrame())
    rejected.append(rejections.rejections_frame(dicomio.Rejection(s, r, "labels") for s, r in problems))
    rejections.log_summary(problems, logging.getLogger("ichbench.external"), "scans")
    if cohort.empty:
        raise ValueError(f"external set {a.label}: no scan has both a usable series and a label; see {a.rejected_out}")
    train = external.training_scans(a.training_manifests)
    cohort, overlap = external.drop_overlap(cohort, train, a.training_name, ds.get("name") or ds.get("source"),
                                            a.label, where=f"{where} (evaluation.external)")
    for path in (a.out, a.cohort, a.rejected_out, a.overlap):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    overlap.to_csv(a.overlap, index=False)
    pd.concat(rejected + [overlap.rename(columns={"scan_id": "item"}).assign(stage="external")[
        ["stage", "item", "reason"]]], ignore_index=True).to_csv(a.rejected_out, index=False)
    if cohort.empty:
        raise ValueError(f"external set {a.label}: every scan is a training scan (see {a.overlap})")
    summary = splits.cohort_summary(cohort, a.protocol, a.label_source)
    summary.insert(0, "external", a.label)
    summary["dropped_training_scans"] = len(overlap)
    summary.to_csv(a.cohort, index=False)
    logging.info("external set %s (%s labels, %s protocol):\n%s", a.label, a.label_source, a.protocol,
                 summary.drop(columns=["protocol", "label_source", "external"]).to_string(index=False))
    logging.info("external set %s: %d scans dropped as RSNA scans of the training dataset", a.label, len(overlap))
    manifest = external.external_manifest(cohort, a.protocol)
    manifest.to_csv(a.out, index=False)
    logging.info("external set %s: %d test slices of %d patients", a.label, len(manifest),
                 manifest["patient_id"].nunique())


def cmd_external_table(a) -> None:
    import pandas as pd

    from ..evaluation import external
    from ..evaluation.aggregate import read_scores
    from .results import _display

    methods = json.loads(a.methods)
    sets = json.loads(a.sets)                       # [{"label", "dataset"}] in config order
    long, info = [], {}
    for s in sets:
        label = s["label"]
        scores = [p for p in a.scores if f"/{label}/scores/" in p]
        locs = [p for p in a.loc if f"/{label}/scores/" in p]
        frame = read_scores(scores)
        long.append(external.set_metrics(label, frame[frame["part"] == "test"], methods, a.protocol,
                                         n_boot=a.bootstrap, seed=a.seed, ddof=a.ddof,
                                         scan_aggregation=a.scan_aggregation, top_k=a.scan_top_k))
        long.append(external.pixel_metrics(label, locs, methods, a.ddof))
        cohort = [c for c in a.cohorts if f"/{label}/" in c]
        row = pd.read_csv(cohort[0]).set_index("scan_class").loc["all"] if cohort else {}
        info[label] = {"dataset": s["dataset"], "patients": row.get("patients", "?"), "scans": row.get("scans", "?"),
                       "slices": row.get("slices", "?"), "dropped": row.get("dropped_training_scans", 0)}
    long = pd.concat(long, ignore_index=True)
    long.to_csv(a.out, index=False, float_format="%.4f")
    Path(a.out_md).write_text(external.markdown(long, {m: _display(m) for m in methods}, info))
    logging.info("external validation: %d sets, %d rows, %d values", len(sets), len(methods), len(long))


def add_commands(command) -> None:
    """Register this group's subcommands through `command(name, help, func)` (see `build_parser`)."""
    s = command("external-manifest", "an external validation set's usable slices, all test slices",
                cmd_external_manifest)
    s.add_argument("--shards", nargs="+", required=True, help="the set's cache shard folders (`preprocess`)")
    s.add_argument("--dataset", required=True, help="JSON of the set's resolved dataset keys")
    s.add_argument("--label", required=True, help="the set's label (evaluation.external[].label)")
    s.add_argument("--label-source", default="csv", choices=["ctfsh", "reads", "csv", "masks"],
                   help="where the set's scan labels come from")
    s.add_argument("--scan-key", default="patient", choices=["patient", "study"], help="what a scan is")
    s.add_argument("--patients", help="the set's patients.csv (scan_id, patient_id)")
    s.add_argument("--scan-info", help="the set's scan_info.csv")
    s.add_argument("--excluded", help="the set's excluded.csv (scan_id, reason)")
    s.add_argument("--min-hemorrhage-area-mm2", type=float, default=0.0, help="slice truth: least bleed area")
    s.add_argument("--protocol", default="paper", choices=["paper", "slice"], help="slice label protocol")
    s.add_argument("--training-manifests", nargs="*", default=[],
                   help="the training dataset's fold manifests (its scans and patients, for the overlap check)")
    s.add_argument("--training-name", required=True, help="the training dataset's adapter (dataset.name)")
    s.add_argument("--rejected-in", nargs="*", default=[], help="rejection CSVs of the set's index and cache")
    s.add_argument("--out", required=True, help="manifest.csv: every test slice of the set")
    s.add_argument("--cohort", required=True, help="cohort.csv of the set (patients, scans, slices per class)")
    s.add_argument("--rejected-out", required=True, help="everything of the set left out, with the reason")
    s.add_argument("--overlap", required=True, help="overlap.csv: scans dropped as RSNA scans of the training data")

    s = command("external-table", "external validation metrics of every row on every external set",
                cmd_external_table)
    s.add_argument("--scores", nargs="+", required=True, help="results/external/<set>/scores/<row>/fold-K.csv")
    s.add_argument("--loc", nargs="*", default=[], help="the score jobs' loc.json of the external sets")
    s.add_argument("--cohorts", nargs="*", default=[], help="results/external/<set>/cohort.csv")
    s.add_argument("--sets", required=True, help='JSON list of {"label", "dataset"} in config order')
    s.add_argument("--methods", required=True, help="JSON list of the rows in table order")
    s.add_argument("--protocol", default="paper", choices=["paper", "slice"], help="the configured protocol")
    s.add_argument("--ddof", type=int, default=0, help="std over fold models with this ddof")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws over the set's patients")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    s.add_argument("--scan-aggregation", default="max", choices=["mean", "max", "topk"], help="slice -> scan score")
    s.add_argument("--scan-top-k", type=int, default=3, help="k of topk")
    s.add_argument("--out", required=True, help="table1_external.csv (long: set, row, level, metric)")
    s.add_argument("--out-md", required=True, help="external.md: the section appended to table1.md")
