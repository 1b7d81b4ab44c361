"""Subcommands that turn score tables into Table 1, the extra tables and the figures."""
from __future__ import annotations

import json
import logging
from pathlib import Path


def cmd_table(a) -> None:
    import pandas as pd

    from ..evaluation import operating, stats
    from ..evaluation.aggregate import context_markdown, read_maps, read_scores, stats_markdown, table1, table1_markdown
    from ..evaluation.compare import check_row

    _draw_threads(a.threads)
    _, records = read_maps(a.maps)
    methods = json.loads(a.methods)
    check_row(a.compare or None, methods, key="--compare (table.compare)")
    scores = read_scores(a.scores)
    table, long = table1(scores, records, methods, a.protocol, ddof=a.ddof)
    display = {m: getattr(_method_cls(m), "display", m) for m in methods}
    table.insert(1, "row", table["method"].map(display))
    if a.external:          # evaluation.external: AUC / AP columns per external set (evaluation/external.py)
        from ..evaluation.external import table1_columns

        table = table1_columns(table, pd.read_csv(a.external), a.protocol)
    table.to_csv(a.out, index=False, float_format="%.4f")
    long.to_csv(a.out_long, index=False, float_format="%.4f")
    sets = stats.unit_sets(scores, a.protocol, a.scan_aggregation, a.scan_top_k)
    ci, comparisons = stats.analyse(scores, methods, a.protocol, n_boot=a.bootstrap, seed=a.seed,
                                    scan_aggregation=a.scan_aggregation, top_k=a.scan_top_k, sets=sets,
                                    compare=a.compare or None)
    if a.out_ci:
        ci.insert(1, "row", ci["method"].map(display))
        ci.to_csv(a.out_ci, index=False, float_format="%.4f")
    if a.out_comparisons:
        comparisons.to_csv(a.out_comparisons, index=False, float_format="%.6g")
    ops, ops_folds = operating.all_operating_points(
        scores, a.protocol, methods, scan_aggregation=a.scan_aggregation, top_k=a.scan_top_k,
        targets=tuple(a.target_specificity), n_boot=a.bootstrap, seed=a.seed, sets=sets)
    for frame, path in ((ops, a.out_operating), (ops_folds, a.out_operating_folds)):
        if path:
            frame.to_csv(path, index=False, float_format="%.6g")
    cohort = pd.read_csv(a.cohort) if a.cohort and Path(a.cohort).exists() else None
    context = context_markdown(a.protocol, a.label_source, a.ddof, sets, cohort)
    extra = stats_markdown(ci, comparisons, display, compare=a.compare or None) + "\n" + operating.operating_markdown(ops, display)
    for md in a.include_md:
        extra += "\n" + Path(md).read_text()
    Path(a.out_md).write_text(table1_markdown(table.assign(method=table["row"]), a.protocol, a.n_folds, a.dataset,
                                              context=context, extra=extra))
    print(table[["row", "AUC", "AP"]].to_string(index=False))


def cmd_compare(a) -> None:
    from ..evaluation import stats
    from ..evaluation.aggregate import read_scores
    from ..evaluation.compare import check_row, compare_markdown, family_name

    _draw_threads(a.threads)
    scores = read_scores(a.scores)
    methods = json.loads(a.methods) if a.methods else list(dict.fromkeys(scores["method"]))
    check_row(a.row, methods, key="compare ROW")
    if a.bootstrap < 1:
        raise ValueError("compare needs bootstrap draws: --bootstrap must be >= 1")
    display = {m: _display(m) for m in methods}
    _, comparisons = stats.analyse(scores, methods, a.protocol, n_boot=a.bootstrap, seed=a.seed,
                                   scan_aggregation=a.scan_aggregation, top_k=a.scan_top_k, compare=a.row)
    comparisons.to_csv(a.out, index=False, float_format="%.6g")
    markdown = compare_markdown(comparisons, a.row, display)
    if a.out_md:
        Path(a.out_md).write_text(markdown)
    print(markdown.rstrip())
    logging.info("compare: %d rows of family %r in %s", int((comparisons["family"] == family_name(a.row)).sum()),
                 family_name(a.row), a.out)


def _display(name: str) -> str:
    """A row's display name; a name the registry does not know stays as it is."""
    try:
        return getattr(_method_cls(name), "display", name)
    except (KeyError, ValueError):
        return name


def cmd_stats_figures(a) -> None:
    import pandas as pd

    from ..evaluation.aggregate import read_scores
    from ..evaluation.stats_figures import forest_plot, roc_curves

    methods = json.loads(a.methods)
    display = {m: getattr(_method_cls(m), "display", m) for m in methods}
    forest_plot(pd.read_csv(a.ci, dtype={"folds_used": str, "folds_one_class": str}), methods, a.out_forest,
                display=display)
    roc_curves(read_scores(a.scores), methods, a.out_roc, display=display)


def cmd_extra_tables(a) -> None:
    from ..evaluation import extra_tables as xt

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


def cmd_strata(a) -> None:
    from ..evaluation import strata
    from ..evaluation.extra_tables import read_scores
    from ..evaluation.strata_report import size_figure, strata_markdown

    _draw_threads(a.threads)
    methods = json.loads(a.methods)
    display = {m: getattr(_method_cls(m), "display", m) for m in methods}
    table = strata.strata_table(read_scores(a.scores), a.manifests, a.series or None, methods,
                                targets=tuple(a.target_specificity), size_bins_mm2=a.size_bins,
                                volume_bins_ml=a.volume_bins, min_units=a.min_units, n_boot=a.bootstrap, seed=a.seed,
                                scan_aggregation=a.scan_aggregation, top_k=a.scan_top_k)
    table.insert(1, "row", table["method"].map(display))
    table.to_csv(a.out, index=False, float_format="%.4f")
    shown = table.assign(method=table["row"])
    markdown = strata_markdown(shown, a.min_units)
    Path(a.out_md).write_text(markdown)
    if a.out_figure:
        Path(a.out_figure).parent.mkdir(parents=True, exist_ok=True)
        size_figure(shown, a.out_figure)
    block = markdown.split("**bleed size")[1:2]                  # the first bleed size table, for the log
    print(("**bleed size" + block[0].split("\n\n**")[0] if block else markdown).rstrip())
    logging.info("strata: %d rows in %s, %s, %s", len(table), a.out, a.out_md, a.out_figure)


def cmd_errors(a) -> None:
    import pandas as pd

    from ..cohort.splits import read_manifest
    from ..evaluation import errors
    from ..evaluation.aggregate import read_scores

    methods = json.loads(a.methods)
    display = {m: getattr(_method_cls(m), "display", m) for m in methods}
    manifests = pd.concat([read_manifest(p) for p in a.manifests], ignore_index=True)
    cases = errors.write_errors(read_scores(a.scores), manifests, errors.read_error_maps(a.errors_npz), methods,
                                a.out_dir, n=a.n, display=display)
    logging.info("error cases: %d rows, %d cases in %s", len(methods), len(cases), a.out_dir)


def _method_cls(name):
    """A row's class, None for one this process cannot name (a `class:` row: its display name is its name)."""
    from ..methods import get_method

    try:
        return get_method(name)
    except KeyError:
        return None


def cmd_confounds(a) -> None:
    from ..evaluation.confounds import confound_table, confounds_markdown

    table = confound_table(a.manifests)
    table.to_csv(a.out, index=False, float_format="%.4f")
    Path(a.out_md).write_text(confounds_markdown(table, a.table1))


def cmd_figure(a) -> None:
    import pandas as pd

    from ..evaluation.aggregate import figure1, read_maps

    maps, _ = read_maps(a.maps)
    cases = pd.read_csv(a.cases, dtype={"sop_uid": str, "patient_id": str})
    figure1(cases, maps, json.loads(a.methods), a.out, percentile=a.percentile)


def cmd_anomaly_figure(a) -> None:
    import numpy as np

    from ..cohort.splits import read_manifest
    from ..evaluation.anomaly_figure import plot_synthetic_anomalies
    from ..training.data import open_slices, row_chunks

    rows = read_manifest(a.manifest)
    # a large fold is read from the slice store: only the brain masks (in chunks) and the picked slices
    data = open_slices(rows[rows["part"] == "train"], where=f"{a.manifest} (training slices)")
    brain = np.concatenate([c.reshape(len(c), -1).sum(1) for c in row_chunks(data.masks["brain_mask"])])
    order = np.argsort(-brain, kind="stable")           # slices with the most brain, not neighbours
    pick = np.sort(order[:: max(1, len(order) // (4 * a.n))][: a.n])
    plot_synthetic_anomalies(data.images[pick], data.masks["head_mask"][pick], data.masks["brain_mask"][pick],
                             a.out, seed=a.seed)


def cmd_bundle(a) -> None:
    import pandas as pd

    from ..evaluation.bundle import STR_COLUMNS, read_runs, write_bundle
    from ..training.runinfo import git_commit
    from . import _version

    def read(path):
        return pd.read_csv(path, dtype=STR_COLUMNS) if path else None

    software = {"ichbench": _version(), **git_commit()}
    bundle = write_bundle(a.out, table=read(a.table), ci=read(a.ci), per_fold=read(a.per_fold),
                          runs=read_runs(a.runs), assignment=pd.read_csv(a.assignment, dtype={"patient_id": str}),
                          cohort=read(a.cohort), settings=json.loads(a.settings), software=software)
    logging.info("results bundle: %d rows, cohort %s, folds %s -> %s", len(bundle["rows"]),
                 bundle["comparability"]["cohort"][:19], bundle["comparability"]["folds"][:19], a.out)


def cmd_merge_results(a) -> None:
    import sys

    from ..evaluation.bundle import BundleMismatch, merge_bundles, merged_markdown, read_bundle, source_names

    bundles = dict(zip(source_names(a.bundles), (read_bundle(p) for p in a.bundles)))
    try:
        merged, diffs = merge_bundles(bundles, allow_different=a.allow_different_cohorts)
    except BundleMismatch as exc:
        print(f"ichbench merge-results: refused: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for line in diffs:
        logging.warning("merged although the bundles differ in %s", line)
    merged.to_csv(a.out, index=False, float_format="%.4f")
    if a.out_md:
        Path(a.out_md).write_text(merged_markdown(merged, diffs))
    print(f"{len(merged)} rows from {len(bundles)} bundles -> {a.out}")


def _draw_threads(n: int) -> None:
    """The bootstrap kernels' threads (`--threads`); at least 1."""
    if n < 1:
        raise ValueError(f"--threads must be >= 1, not {n}")
    from ..evaluation.kernels import set_threads

    set_threads(n)


def _bootstrap_options(s) -> None:
    """The patient bootstrap and scan aggregation options shared by `table`, `compare` and `strata` (the same
    defaults give the same draws)."""
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws over test patients (0: none)")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws (Table 1's: the same draws)")
    s.add_argument("--threads", type=int, default=1,
                   help="threads the bootstrap draws are split over (the values do not depend on it)")
    s.add_argument("--scan-aggregation", default="max", choices=["mean", "max", "topk"],
                   help="slice scores -> scan score for the scan-level metrics")
    s.add_argument("--scan-top-k", type=int, default=3, help="k of --scan-aggregation topk")


def add_commands(command) -> None:
    """Register this group's subcommands through `command(name, help, func)` (see `build_parser`)."""
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
    _bootstrap_options(s)
    s.add_argument("--include-md", nargs="*", action="extend", default=[],
                   help="Markdown sections appended to table1.md (strata.md; repeatable)")
    s.add_argument("--external", default="", help="table1_external.csv (`external-table`): its columns join Table 1")
    s.add_argument("--out-operating", default="", help="CSV of the thresholds fixed on validation, applied to test")
    s.add_argument("--out-operating-folds", default="", help="the same per fold, with the thresholds")
    s.add_argument("--target-specificity", type=float, nargs="+", default=[0.90, 0.95, 0.99],
                   help="specificities (0-1) of the validation-normal thresholds")
    s.add_argument("--cohort", default="", help="cohort.csv of the split (patients and slices per class)")
    s.add_argument("--label-source", default="", help="how the scan labels were made (for table1.md)")
    s.add_argument("--compare", default="", help="a row whose AUC / AP differences (row - other) against every "
                   "other row come first in the comparisons and table1.md")

    s = command("compare", "one row against every other row: paired AUC / AP differences (row - other) with "
                "CIs and Holm-adjusted p-values", cmd_compare)
    s.add_argument("row", metavar="ROW", help="the row compared with all others (a method name)")
    s.add_argument("--scores", nargs="+", required=True, help="score CSVs of every method x fold")
    s.add_argument("--methods", default="", help="JSON list of methods in table order (default: as in the scores)")
    s.add_argument("--protocol", default="paper", help="label protocol of the run (paper or slice)")
    _bootstrap_options(s)
    s.add_argument("--out", required=True, help="output CSV of the comparisons, ROW's family first")
    s.add_argument("--out-md", default="", help="output Markdown section: ROW against every row")

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

    s = command("strata", "slice AUC and validation-threshold sensitivity by bleed size, position, acquisition, "
                "subtype; scan AUC by bleed volume", cmd_strata)
    s.add_argument("--scores", nargs="+", required=True, help="score CSVs written by `score`")
    s.add_argument("--manifests", nargs="+", required=True, help="fold manifests (npz of each series, subtypes)")
    s.add_argument("--series", nargs="*", default=[],
                   help="header tables keyed by series_uid (series_selected.csv, index.csv): kernel, manufacturer, "
                        "model, orientation, dataset where they have them")
    s.add_argument("--methods", required=True, help="JSON list of methods in table order")
    s.add_argument("--target-specificity", type=float, nargs="+", default=[0.90, 0.95, 0.99],
                   help="specificities whose thresholds are set on each fold's validation normals")
    s.add_argument("--size-bins", type=float, nargs="+", default=[0, 100, 500, 2000],
                   help="bleed area bin edges per slice in mm^2 (the last bin is open)")
    s.add_argument("--volume-bins", type=float, nargs="+", default=[0, 5, 30],
                   help="bleed volume bin edges per scan in ml (the last bin is open)")
    s.add_argument("--min-units", type=int, default=10,
                   help="strata with fewer anomalous units are shown as too few, without a value")
    _bootstrap_options(s)
    s.add_argument("--out", required=True, help="output strata.csv")
    s.add_argument("--out-md", required=True, help="output Markdown section (strata.md)")
    s.add_argument("--out-figure", default="", help="output PNG: sensitivity at spec95 against bleed size")

    s = command("errors", "each row's worst false negatives and false positives at the validation threshold",
                cmd_errors)
    s.add_argument("--scores", nargs="+", required=True, help="score CSVs written by `score`")
    s.add_argument("--errors-npz", nargs="+", required=True, help="the score rule's fold-K.errors.npz (their maps)")
    s.add_argument("--manifests", nargs="+", required=True, help="fold manifests (cached slices, subtypes)")
    s.add_argument("--methods", required=True, help="JSON list of methods")
    s.add_argument("--out-dir", required=True, help="folder of <method>.csv and <method>.png")
    s.add_argument("--n", type=int, default=5, help="cases of each kind per row, pooled over folds")

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

    s = command("bundle", "the results bundle: Table 1 with CIs, per-fold metrics, rows, digests, environment (JSON)",
                cmd_bundle)
    s.add_argument("--table", required=True, help="table1.csv")
    s.add_argument("--ci", default="", help="table1_ci.csv")
    s.add_argument("--per-fold", default="", help="table1_per_fold.csv")
    s.add_argument("--runs", nargs="+", required=True, help="the models' run.json files (models/<row>/fold-K/)")
    s.add_argument("--assignment", required=True, help="splits/assignment.csv (digested, never copied)")
    s.add_argument("--cohort", default="", help="data/cohort.csv (its counts)")
    s.add_argument("--settings", default="{}",
                   help="JSON: protocol, label_source, dataset block, table block, rows (the workflow passes them)")
    s.add_argument("--out", required=True, help="output ichbench-results.json")

    s = command("merge-results", "one table from several results bundles; refuses bundles on different cohorts, "
                "folds or evaluation settings unless told to", cmd_merge_results)
    s.add_argument("bundles", nargs="+", help="ichbench-results.json files")
    s.add_argument("--out", required=True, help="output merged CSV (a `source` column per bundle)")
    s.add_argument("--out-md", default="", help="output merged Markdown")
    s.add_argument("--allow-different-cohorts", action="store_true",
                   help="merge even when the cohort, folds, protocol, label source or bootstrap differ (warns)")
