"""Command line: every pipeline stage as a subcommand, usable without Snakemake.

    python -m ichbench synth --out data/synthetic
    python -m ichbench index --dicom-dir data/synthetic/dicom --out results/data
    python -m ichbench index --nifti-dir data/ct --nifti-masks-dir data/masks --out results/data   # NIfTI input
    python -m ichbench preprocess --data results/data --out results/data/cache/shard-0
    python -m ichbench split --shards results/data/cache/shard-0 --labels data/synthetic/cq500_labels.csv ...
    python -m ichbench train --method AE --manifest results/splits/fold-0.csv --out results/models/AE/fold-0
    python -m ichbench score --model results/models/AE/fold-0/model.pt --manifest results/splits/fold-0.csv ...
    python -m ichbench table --scores results/scores/*/fold-*.csv --maps ... --out results/table1.csv
    python -m ichbench figure --maps ... --cases results/splits/figure_cases.csv --out results/figure1.png
    python -m ichbench stats-figures --scores ... --ci results/table1_ci.csv --out-forest ... --out-roc ...
    python -m ichbench extra-tables --scores ... --loc ... --manifests ... --out-loc results/localisation.csv ...
    python -m ichbench bhx-transfer --index results/data/index.csv --series results/data/series_candidates.csv ...
    python -m ichbench confounds --manifests results/splits/fold-*.csv --out results/confounds.csv ...
    python -m ichbench methods            # the registered Table 1 rows
    python -m ichbench bench --out results/bench.csv   # throughput of every row, projected Table 1 time

`snakemake` runs exactly these commands (see workflow/rules/).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def cmd_synth(a) -> None:
    from .synthetic import SyntheticConfig, generate

    params = json.loads(a.params) if a.params else {}
    params.pop("out_dir", None)
    summary = generate(a.out, SyntheticConfig(**params), workers=a.workers)
    logging.info("synthetic dataset written to %s: %s", a.out, summary)


def cmd_index(a) -> None:
    from .preprocess import build_index

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.nifti_dir:
        from .nifti import build_index as build_nifti_index

        cand = build_nifti_index(a.nifti_dir, out / "index.csv", out / "series_candidates.csv",
                                 out / "rejected_index.csv", masks_dir=a.nifti_masks_dir or None,
                                 min_slices=a.min_slices)
    else:
        cand = build_index(a.dicom_dir, out / "index.csv", out / "series_candidates.csv", out / "rejected_index.csv",
                           min_slices=a.min_slices, min_extent_mm=a.min_extent_mm, workers=a.workers,
                           series_override=a.series_override or None,
                           bone_patterns=json.loads(a.bone_patterns) if a.bone_patterns else (),
                           axial_tolerance_deg=a.axial_tolerance_deg)
    logging.info("%d series of %d scans; %d selected (see %s)", len(cand), cand["patient_id"].nunique(),
                 int(cand["selected"].sum()), out / "series_selected.csv")


def cmd_preprocess(a) -> None:
    from .preprocess import preprocess_shard
    from .windowing import windows_from_config

    data = Path(a.data)
    table = preprocess_shard(data / "index.csv", data / "series_candidates.csv", a.out, shard=a.shard,
                             n_shards=a.n_shards, windows=windows_from_config(json.loads(a.windows)),
                             size=a.size, gt_dir=a.gt_dir or None, workers=a.workers,
                             boxes=[b for b in (a.boxes or []) if b] or None, non_hu=a.non_hu)
    logging.info("shard %d/%d: %d series, %d slices cached", a.shard, a.n_shards, len(table),
                 int(table["n_slices"].sum()) if len(table) else 0)


def cmd_bhx_transfer(a) -> None:
    import pandas as pd

    from . import bhx, bhx_transfer
    from .preprocess import read_index

    boxes = bhx.read_bhx([b for b in a.boxes if b])
    chosen = pd.read_csv(a.series, dtype={"patient_id": str, "study_uid": str, "series_uid": str})
    moved, record = bhx_transfer.transfer(boxes, read_index(a.index), chosen)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    bhx_transfer.to_bhx_format(moved).to_csv(a.out, index=False)
    record.to_csv(a.record, index=False)
    s = bhx_transfer.summary(record)
    logging.info("BHX: %d boxes of %d scans; %d on the chosen series, %d moved there by patient coordinates "
                 "(onto %d slices), %d dropped; %d scans keep a box", s["boxes"], s["scans"], s["boxes_on_chosen"],
                 s["boxes_transferred"], int((moved["transfer"] == bhx_transfer.BY_COORDS).sum()),
                 s["boxes_dropped"], s["scans_kept"])
    for reason, n in s["dropped_by_reason"].items():
        logging.info("  %d boxes %s", n, reason)


def cmd_split(a) -> None:
    import pandas as pd

    from . import assignment, bhx, dicomio, guards, labels, rejections, splits, subtypes

    slices = splits.collect_slices(a.shards, a.min_hemorrhage_area_mm2)
    if a.slice_labels and Path(a.slice_labels).exists():
        slices = splits.apply_slice_labels(slices, labels.read_slice_labels(a.slice_labels))
    scan_labels = labels.scan_labels(a.label_source, ctfsh=a.labels, reads=a.reads, scan_id_format=a.scan_id_format,
                                     table=a.labels, slices=slices, keep_undecided=True)
    cohort, problems = splits.build_cohort(slices, scan_labels)
    cohort = subtypes.attach(cohort, _scan_info(a))
    rejected = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in a.rejected_in if Path(p).exists()]
    # a missing download told apart from a scan whose files hold no usable series
    problems = rejections.explain_unlabelled_scans(problems, pd.concat(rejected, ignore_index=True) if rejected
                                                   else pd.DataFrame())
    rejected.append(dicomio.rejections_frame(dicomio.Rejection(s, r, "labels") for s, r in problems))
    rejections.log_summary(problems, logging.getLogger("ichbench.split"), "scans")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(a.rejected_out).parent.mkdir(parents=True, exist_ok=True)
    pd.concat(rejected, ignore_index=True).to_csv(a.rejected_out, index=False)
    boxes = bhx.read_bhx([b for b in (a.boxes or []) if b])
    if a.boxes_out:
        matched = bhx.match_boxes(cohort if not cohort.empty else slices, boxes)
        matched.to_csv(a.boxes_out, index=False)
        if len(boxes):
            logging.info("BHX: %d boxes read, %d lie on cached cohort slices (%d slices, %d series, %d scans)",
                         len(boxes), len(matched), matched["sop_uid"].nunique(), matched["series_uid"].nunique(),
                         matched["patient_id"].nunique())
            if "transfer" in matched:
                logging.info("BHX boxes kept by transfer kind: %s", matched["transfer"].value_counts().to_dict())
    if cohort.empty:
        raise ValueError(f"no scan has both a usable series and a label; see {a.rejected_out}")
    summary = splits.cohort_summary(cohort, a.protocol, a.label_source)
    summary = summary.merge(subtypes.cohort_counts(cohort), on="scan_class", how="left")
    summary.to_csv(a.cohort, index=False)
    logging.info("cohort (%s labels, %s protocol):\n%s", a.label_source, a.protocol,
                 summary.drop(columns=["protocol", "label_source"]).to_string(index=False))
    guards.check_expected(summary, json.loads(a.expected) if a.expected else None, a.expected_action)
    patients = splits.patient_table(cohort)
    if a.assignment_in:
        parts, _ = assignment.parts_from(assignment.read(a.assignment_in), patients, a.n_folds,
                                         source=a.assignment_in)
    else:
        parts = splits.assign_folds(patients, a.n_folds, a.val_fraction, a.seed)
    if a.assignment_out:
        assignment.to_table(parts, patients).to_csv(a.assignment_out, index=False)
    manifests = splits.make_manifests(cohort, a.protocol, a.n_folds, a.val_fraction, a.seed, parts=parts)
    for k, m in enumerate(manifests):
        m.to_csv(out / f"fold-{k}.csv", index=False)
        logging.info("fold %d: %s", k, m.groupby(["part", "label"]).size().to_dict())
    splits.choose_figure_cases(manifests, a.figure_cases, a.figure_seed).to_csv(out / "figure_cases.csv", index=False)


def _scan_info(a):
    """Per-scan diagnosis, subtypes and reader ICH votes (subtypes.py): CTFSH diagnosis under
    label_source ctfsh, the reads majority otherwise (where a reads file exists)."""
    from . import labels, subtypes

    ctfsh = labels.read_ctfsh(a.labels, a.scan_id_format) if a.label_source == "ctfsh" and a.labels else None
    reads = a.reads if a.reads and Path(a.reads).is_file() else None
    try:
        return subtypes.scan_info(ctfsh, reads)
    except (KeyError, ValueError, TypeError) as exc:
        raise labels.LabelError(f"{reads}: cannot read reader ICH votes and subtypes ({exc})") from None


def cmd_train(a) -> None:
    from .train import train

    rec = train(a.method, json.loads(a.params) if a.params else {}, a.manifest, a.out, device=a.device,
                seed=a.seed, checkpoint_every=a.checkpoint_every, checkpoint_seconds=a.checkpoint_seconds,
                threads=a.threads,
                # a bar only on a terminal: log files get the one line per epoch, no carriage-return frames
                progress=not a.no_progress and sys.stderr.isatty(), deterministic=a.deterministic)
    logging.info("done: %s", json.dumps({k: rec[k] for k in ("train_seconds", "slices_per_second", "device")}))


def cmd_score(a) -> None:
    from .score import score_fold

    t = score_fold(a.model, a.manifest, a.out_csv, a.out_maps, figure_cases=a.figure_cases, device=a.device,
                   batch_size=a.batch_size, threads=a.threads, out_loc=a.out_loc,
                   pixel_negative_rate=a.pixel_negative_rate, loc_seed=a.loc_seed)
    logging.info("scored %d slices", len(t))


def cmd_table(a) -> None:
    import pandas as pd

    from . import stats
    from .aggregate import context_markdown, read_maps, read_scores, stats_markdown, table1, table1_markdown

    _, records = read_maps(a.maps)
    methods = json.loads(a.methods)
    scores = read_scores(a.scores)
    table, long = table1(scores, records, methods, a.protocol, ddof=a.ddof)
    display = {m: getattr(_method_cls(m), "display", m) for m in methods}
    table.insert(1, "row", table["method"].map(display))
    table.to_csv(a.out, index=False, float_format="%.4f")
    long.to_csv(a.out_long, index=False, float_format="%.4f")
    sets = stats.unit_sets(scores, a.protocol, a.scan_aggregation, a.scan_top_k)
    ci, comparisons = stats.analyse(scores, methods, a.protocol, n_boot=a.bootstrap, seed=a.seed,
                                    scan_aggregation=a.scan_aggregation, top_k=a.scan_top_k, sets=sets)
    if a.out_ci:
        ci.insert(1, "row", ci["method"].map(display))
        ci.to_csv(a.out_ci, index=False, float_format="%.4f")
    if a.out_comparisons:
        comparisons.to_csv(a.out_comparisons, index=False, float_format="%.6g")
    cohort = pd.read_csv(a.cohort) if a.cohort and Path(a.cohort).exists() else None
    context = context_markdown(a.protocol, a.label_source, a.ddof, sets, cohort)
    Path(a.out_md).write_text(table1_markdown(table.assign(method=table["row"]), a.protocol, a.n_folds, a.dataset,
                                              context=context, extra=stats_markdown(ci, comparisons, display)))
    print(table[["row", "AUC", "AP"]].to_string(index=False))


def cmd_stats_figures(a) -> None:
    import pandas as pd

    from .aggregate import read_scores
    from .stats_figures import forest_plot, roc_curves

    methods = json.loads(a.methods)
    display = {m: getattr(_method_cls(m), "display", m) for m in methods}
    forest_plot(pd.read_csv(a.ci, dtype={"folds_used": str, "folds_one_class": str}), methods, a.out_forest,
                display=display)
    roc_curves(read_scores(a.scores), methods, a.out_roc, display=display)


def cmd_extra_tables(a) -> None:
    from . import extra_tables as xt

    methods = json.loads(a.methods)
    display = {m: getattr(_method_cls(m), "display", m) for m in methods}
    scores = xt.read_scores(a.scores)
    loc = xt.localisation_table(a.loc, methods, a.ddof)
    brain = xt.brain_table(scores, methods, a.ddof)
    sub = xt.subtype_table(scores, a.manifests, methods, a.ddof)
    for t, path in ((loc, a.out_loc), (brain, a.out_brain), (sub, a.out_subtypes)):
        if not t.empty:
            t.insert(1, "row", t["method"].map(display))
        t.to_csv(path, index=False, float_format="%.4f")
    show = [t.assign(method=t["row"]) if not t.empty else t for t in (loc, brain, sub)]
    Path(a.out_md).write_text(xt.markdown(*show, a.protocol, a.ddof))
    logging.info("extra tables: %s, %s, %s, %s", a.out_loc, a.out_brain, a.out_subtypes, a.out_md)


def _method_cls(name):
    from .methods import get_method

    return get_method(name)


def cmd_confounds(a) -> None:
    from .confounds import confound_table, confounds_markdown

    table = confound_table(a.manifests)
    table.to_csv(a.out, index=False, float_format="%.4f")
    Path(a.out_md).write_text(confounds_markdown(table, a.table1))


def cmd_figure(a) -> None:
    import pandas as pd

    from .aggregate import figure1, read_maps

    maps, _ = read_maps(a.maps)
    cases = pd.read_csv(a.cases, dtype={"sop_uid": str, "patient_id": str})
    figure1(cases, maps, json.loads(a.methods), a.out, percentile=a.percentile)


def cmd_anomaly_figure(a) -> None:
    import numpy as np

    from .anomaly_figure import plot_synthetic_anomalies
    from .data import load_slices, read_manifest

    rows = read_manifest(a.manifest)
    data = load_slices(rows[rows["part"] == "train"])
    brain = data.masks["brain_mask"].reshape(len(data), -1).sum(1)
    order = np.argsort(-brain, kind="stable")           # slices with the most brain, not neighbours
    pick = np.sort(order[:: max(1, len(order) // (4 * a.n))][: a.n])
    plot_synthetic_anomalies(data.images[pick], data.masks["head_mask"][pick], data.masks["brain_mask"][pick],
                             a.out, seed=a.seed)


def cmd_methods(a) -> None:
    from .digest import code_digest
    from .methods import REGISTRY

    for name, cls in REGISTRY.items():
        print(f"{name:18s} {cls.group:16s} {code_digest(name)}  {cls.paper}")


def cmd_params(a) -> None:
    from . import config

    cfg = config.load(a.config, *a.configfile)
    for m in config.selected_rows(cfg):
        print(m, config.params_json(cfg, m))


def cmd_bench(a) -> None:
    from .bench import run_bench

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    levels = None
    if a.concurrent:
        from .bench_concurrent import parse_levels

        levels = parse_levels(a.concurrent)
    if not a.concurrent_only:
        rows = run_bench(a.out, size=a.size, batch=a.batch, seconds=a.seconds, device=a.device,
                         rows=a.rows or None, workers=a.workers)
        logging.info("bench written to %s; projected paper-recipe Table 1: %.2f h on %s", a.out,
                     rows[-1]["table1_hours"], rows[-1]["device"])
    if levels:
        from .bench_concurrent import run_concurrent

        out = Path(a.out).with_name(Path(a.out).stem + "-concurrent.csv")
        got = run_concurrent(out, levels, row=a.concurrent_row, device=a.device, size=a.size, batch=a.batch,
                             seconds=a.concurrent_seconds)
        logging.info("concurrent training written to %s: %s", out,
                     ", ".join(f"{r['processes']} x: {r['img_s_total'] or 0:.1f} img/s" for r in got))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and shows every option's default."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ichbench")
    except PackageNotFoundError:                      # run from src/ without installation
        return __import__("ichbench").__version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ichbench", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and a full traceback instead of a one-line error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)
        s.set_defaults(func=func)
        return s

    s = command("synth", "write the built-in synthetic head CT dataset", cmd_synth)
    s.add_argument("--out", required=True, help="output folder (dicom/, masks/, label files)")
    s.add_argument("--params", help="JSON of SyntheticConfig fields (the `synthetic:` keys of config.yaml)")
    s.add_argument("--workers", type=int, default=1, help="worker processes")

    s = command("index", "index a DICOM (or NIfTI) folder by headers and choose one series per scan", cmd_index)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--dicom-dir", help="folder searched recursively for DICOM files")
    src.add_argument("--nifti-dir", help="folder of .nii/.nii.gz CT volumes in HU (one per scan) instead of DICOM")
    s.add_argument("--nifti-masks-dir", help="folder of same-shape hemorrhage masks for --nifti-dir")
    s.add_argument("--out", required=True,
                   help="folder for index.csv, series_candidates.csv, series_selected.csv, rejected_index.csv")
    s.add_argument("--min-slices", type=int, default=8, help="fewest slices an eligible series has")
    s.add_argument("--min-extent-mm", type=float, default=60.0,
                   help="the thinnest series covering at least this extent (mm) is chosen")
    s.add_argument("--series-override", help="CSV patient_id,series_uid replacing the automatic series choice")
    s.add_argument("--bone-patterns", help="JSON list of extra regular expressions marking bone-kernel series")
    s.add_argument("--axial-tolerance-deg", type=float, default=30.0,
                   help="largest angle (degrees) between the slice normal and the head axis of an axial series")
    s.add_argument("--workers", type=int, default=1, help="worker processes reading headers")

    s = command("preprocess", "cache one shard of the chosen series as windowed NPZ", cmd_preprocess)
    s.add_argument("--data", required=True, help="folder written by `index`")
    s.add_argument("--out", required=True, help="folder of this shard's NPZ files, series.csv and rejected.csv")
    s.add_argument("--shard", type=int, default=0, help="which shard (0-based) this job caches")
    s.add_argument("--n-shards", type=int, default=1, help="number of shards the series are split into")
    s.add_argument("--windows", default=json.dumps([{"name": "brain", "level": 40, "width": 80},
                                                    {"name": "subdural", "level": 75, "width": 215},
                                                    {"name": "bone", "level": 600, "width": 2800}]),
                   help="JSON list of windows (name, level, width in HU), one image channel each")
    s.add_argument("--size", type=int, default=128, help="cached slice size in pixels (square)")
    s.add_argument("--gt-dir", help="folder of <SeriesInstanceUID>.npz hemorrhage masks")
    s.add_argument("--boxes", nargs="*", default=[], help="BHX box CSV file(s), rasterised into gt_mask")
    s.add_argument("--non-hu", default="reject", choices=["reject", "accept"],
                   help="a series whose values do not look like CT in HU: reject it, or accept it with a warning")
    s.add_argument("--workers", type=int, default=1, help="worker processes")

    s = command("bhx-transfer", "move BHX boxes onto the chosen series by patient coordinates", cmd_bhx_transfer)
    s.add_argument("--index", required=True, help="index.csv of `index` (geometry of every series)")
    s.add_argument("--series", required=True, help="series_candidates.csv of `index` (column selected)")
    s.add_argument("--boxes", nargs="+", required=True, help="BHX box CSV file(s)")
    s.add_argument("--out", required=True, help="box file on the chosen slices (BHX format + transfer columns)")
    s.add_argument("--record", required=True, help="CSV: every input box and what became of it")

    s = command("split", "cohort, patient-level fold manifests and Figure 1 cases", cmd_split)
    s.add_argument("--shards", nargs="+", required=True, help="cache shard folders written by `preprocess`")
    s.add_argument("--label-source", default="ctfsh", choices=["ctfsh", "reads", "csv", "masks"],
                   help="ctfsh / csv: --labels file; reads: --reads file; masks: from the cached ground truth")
    s.add_argument("--labels", help="CTFSH cq500_labels.csv (ctfsh) or scan_id,label CSV (csv)")
    s.add_argument("--reads", help="CQ500 reads.csv (label source reads)")
    s.add_argument("--scan-id-format", default="CQ500-CT-{n}",
                   help="how a label file's CT_<n> maps to the DICOM PatientID")
    s.add_argument("--slice-labels", help="optional CSV sop_uid,hemorrhage of slice ground truth")
    s.add_argument("--min-hemorrhage-area-mm2", type=float, default=0.0,
                   help="a slice is anomalous where its full-resolution ground truth covers more (0: any voxel)")
    s.add_argument("--protocol", default="paper", choices=["paper", "slice"],
                   help="paper: every slice of an ICH scan is anomalous; slice: only slices with hemorrhage")
    s.add_argument("--n-folds", type=int, default=5, help="number of patient-level folds")
    s.add_argument("--val-fraction", type=float, default=0.11, help="share of patients per class for validation")
    s.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    s.add_argument("--figure-cases", type=int, default=3, help="number of ICH cases shown in Figure 1")
    s.add_argument("--figure-seed", type=int, default=0, help="seed of the Figure 1 case choice")
    s.add_argument("--out", required=True, help="folder for fold-K.csv and figure_cases.csv")
    s.add_argument("--cohort", required=True, help="output CSV of patients and slices per class")
    s.add_argument("--rejected-in", nargs="*", default=[], help="rejection CSVs of earlier stages to include")
    s.add_argument("--rejected-out", required=True, help="output CSV of everything left out, with the reason")
    s.add_argument("--boxes", nargs="*", default=[], help="BHX box CSV file(s)")
    s.add_argument("--boxes-out", help="CSV of the BHX boxes matched to cached slices")
    s.add_argument("--assignment-in", help="a patient -> fold assignment.csv to reuse (assignment.py)")
    s.add_argument("--assignment-out", help="where to write this run's patient -> fold assignment.csv")
    s.add_argument("--expected", help='JSON of expected patients per class, e.g. {"normal": 117, "pathological": 247}')
    s.add_argument("--expected-action", default="fail", choices=["fail", "warn"],
                   help="what a cohort that differs from --expected does")

    s = command("train", "train one method on one fold", cmd_train)
    s.add_argument("--method", required=True, help="Table 1 row (see `ichbench methods`)")
    s.add_argument("--params", help="JSON of hyper-parameters (see `ichbench params`)")
    s.add_argument("--manifest", required=True, help="fold manifest fold-K.csv written by `split`")
    s.add_argument("--out", required=True, help="folder for model.pt, history.csv, run.json, checkpoint.pt")
    s.add_argument("--device", default="auto", help="auto (CUDA where present, else CPU), cpu, cuda or cuda:N")
    s.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and augmentations")
    s.add_argument("--checkpoint-every", type=int, default=1, help="epochs between resumable checkpoints (0 = none)")
    s.add_argument("--checkpoint-seconds", type=float, default=0,
                   help="skip a due checkpoint while fewer seconds than this have passed since the last one "
                        "(0 = write every one; the workflow's default is train.checkpoint_seconds: 60)")
    s.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    s.add_argument("--no-progress", action="store_true",
                   help="no progress bar even on a terminal (never one when stderr is a file)")
    s.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (cuDNN, torch.use_deterministic_algorithms); slower on a GPU")

    s = command("score", "score a fold's validation and test slices", cmd_score)
    s.add_argument("--model", required=True, help="model.pt written by `train`")
    s.add_argument("--manifest", required=True, help="the fold manifest the model was trained on")
    s.add_argument("--figure-cases", help="figure_cases.csv: slices whose maps are kept for Figure 1")
    s.add_argument("--out-csv", required=True, help="output CSV of slice scores")
    s.add_argument("--out-maps", required=True, help="output NPZ of the Figure 1 cases' maps")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--batch-size", default="auto",
                   help="slices per scoring batch: a whole number, or auto (128 on a GPU, 32 on a CPU)")
    s.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    s.add_argument("--out-loc", help="JSON of the test slices' localisation metrics (localisation.py)")
    s.add_argument("--pixel-negative-rate", type=float, default=0.0625,
                   help="share of non-hemorrhage pixels sampled for pixel AUROC / Dice")
    s.add_argument("--loc-seed", type=int, default=0, help="seed of that pixel sample")

    s = command("table", "Table 1 from score tables", cmd_table)
    s.add_argument("--scores", nargs="+", required=True, help="score CSVs of every method x fold")
    s.add_argument("--maps", nargs="+", required=True, help="maps NPZs (their records give epochs and notes)")
    s.add_argument("--methods", required=True, help="JSON list of methods in table order")
    s.add_argument("--protocol", default="paper", help="label protocol of the run (paper or slice)")
    s.add_argument("--n-folds", type=int, default=5, help="number of folds (for the caption)")
    s.add_argument("--dataset", default="", help="dataset name for the caption")
    s.add_argument("--ddof", type=int, default=0, help="delta degrees of freedom of the std over folds")
    s.add_argument("--out", required=True, help="output table1.csv")
    s.add_argument("--out-long", required=True, help="output per-fold long table")
    s.add_argument("--out-md", required=True, help="output Markdown table")
    s.add_argument("--out-ci", default="", help="CSV of the bootstrap CIs (table1_ci.csv)")
    s.add_argument("--out-comparisons", default="", help="CSV of the paired row comparisons")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws over test patients (0: none)")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    s.add_argument("--scan-aggregation", default="max", choices=["mean", "max", "topk"],
                   help="slice scores -> scan score for the scan-level metrics")
    s.add_argument("--scan-top-k", type=int, default=3, help="k of --scan-aggregation topk")
    s.add_argument("--cohort", default="", help="cohort.csv of the split (patients and slices per class)")
    s.add_argument("--label-source", default="", help="how the scan labels were made (for table1.md)")

    s = command("stats-figures", "forest plot of every row's AUC with its CI; ROC curves per row", cmd_stats_figures)
    s.add_argument("--scores", nargs="+", required=True, help="score CSVs written by `score`")
    s.add_argument("--ci", required=True, help="table1_ci.csv of `ichbench table`")
    s.add_argument("--methods", required=True, help="JSON list of methods in table order")
    s.add_argument("--out-forest", required=True, help="output forest plot (PNG)")
    s.add_argument("--out-roc", required=True, help="output ROC curves (PNG)")

    s = command("extra-tables", "localisation, brain-masked score and ICH subtype tables", cmd_extra_tables)
    s.add_argument("--scores", nargs="+", required=True, help="score CSVs written by `score`")
    s.add_argument("--loc", nargs="+", required=True, help="the score rule's fold-K.loc.json files")
    s.add_argument("--manifests", nargs="+", required=True, help="fold manifests (diagnosis columns)")
    s.add_argument("--methods", required=True, help="JSON list of methods in table order")
    s.add_argument("--protocol", default="paper", help="label protocol of the run (paper or slice)")
    s.add_argument("--ddof", type=int, default=0, help="delta degrees of freedom of the std over folds")
    s.add_argument("--out-loc", required=True, help="output localisation.csv")
    s.add_argument("--out-brain", required=True, help="output table_brain.csv (brain-masked slice score)")
    s.add_argument("--out-subtypes", required=True, help="output table_subtypes.csv")
    s.add_argument("--out-md", required=True, help="output Markdown of the three tables")

    s = command("confounds", "how well trivial image statistics alone separate the classes", cmd_confounds)
    s.add_argument("--manifests", nargs="+", required=True, help="the fold manifests (fold-K.csv)")
    s.add_argument("--table1", help="Table 1 CSV, to compare the statistics with the rows' AUCs")
    s.add_argument("--out", required=True, help="output confounds.csv")
    s.add_argument("--out-md", required=True, help="output confounds.md")

    s = command("figure", "Figure 1 from the score rule's maps", cmd_figure)
    s.add_argument("--maps", nargs="+", required=True, help="maps NPZs written by `score`")
    s.add_argument("--cases", required=True, help="figure_cases.csv written by `split`")
    s.add_argument("--methods", required=True, help="JSON list of methods (columns)")
    s.add_argument("--percentile", type=float, default=99.0,
                   help="percentile of a method's map values mapped to the top of the colour scale")
    s.add_argument("--out", required=True, help="output image (PNG)")

    s = command("anomaly-figure", "picture of every synthetic-anomaly generator on training slices",
                cmd_anomaly_figure)
    s.add_argument("--manifest", required=True, help="a fold manifest; its training slices are used")
    s.add_argument("--n", type=int, default=3, help="number of slices (rows)")
    s.add_argument("--seed", type=int, default=0, help="seed of the generators")
    s.add_argument("--out", required=True, help="output image (PNG)")

    command("methods", "list the registered methods and their code digests", cmd_methods)

    s = command("bench", "training images/s of every row vs a bare loop, generators CPU vs device, "
                         "projected paper-recipe Table 1 time (CSV)", cmd_bench)
    s.add_argument("--out", default="results/bench.csv", help="CSV to write")
    s.add_argument("--size", type=int, default=128, help="slice size (the paper's 128; smaller on a CPU)")
    s.add_argument("--batch", type=int, default=64, help="batch size of every timed loop")
    s.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers of the reference-style loop (default: all CPUs)")
    s.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    s.add_argument("--concurrent", default="",
                   help="also time this many training processes at once on the device, e.g. 1,2,4 (the "
                        "concurrent row's bare loop each; aggregate images/s into <out>-concurrent.csv)")
    s.add_argument("--concurrent-seconds", type=float, default=10.0, help="timed seconds per --concurrent level")
    s.add_argument("--concurrent-row", default="AE", help="the row the --concurrent processes train")
    s.add_argument("--concurrent-only", action="store_true", help="only the --concurrent measurement")
    s.add_argument("rows", nargs="*", help="rows to time (default: all registered)")

    s = command("params", "print each row's resolved hyper-parameters, as the workflow passes them", cmd_params)
    s.add_argument("--config", default="config.yaml", help="the workflow's config file (Snakefile `configfile:`)")
    s.add_argument("--configfile", nargs="+", default=[],
                   help="further config files merged on top in order, as `snakemake --configfile` does "
                        "(mappings merge, lists replace)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from .config import ConfigError
    from .dicomio import DicomReadError
    from .heap import keep_freed_memory
    from .labels import LabelError

    keep_freed_memory()     # training and scoring steps reuse freed activations instead of faulting them in again
    try:
        args.func(args)
    except (ConfigError, DicomReadError, LabelError, FileNotFoundError, ValueError, RuntimeError) as exc:
        if args.verbose:
            raise
        print(f"ichbench {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
