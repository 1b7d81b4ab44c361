"""Subcommands that run one Table 1 row on one fold: train, score; and outside the pipeline: export, predict."""
from __future__ import annotations

import json
import logging
import sys


def cmd_train(a) -> None:
    from ..training.train import train

    rec = train(a.method, json.loads(a.params) if a.params else {}, a.manifest, a.out, device=a.device,
                seed=a.seed, checkpoint_every=a.checkpoint_every, checkpoint_seconds=a.checkpoint_seconds,
                threads=a.threads, in_memory=a.in_memory, memory_budget_gb=a.memory_budget_gb,
                # a bar only on a terminal: log files get the one line per epoch, no carriage-return frames
                progress=not a.no_progress and sys.stderr.isatty(), deterministic=a.deterministic,
                method_class=a.method_class, check_contract=True if a.check_contract else None)
    logging.info("done: %s", json.dumps({k: rec[k] for k in ("train_seconds", "slices_per_second", "device")}))


def cmd_score(a) -> None:
    from ..training.score import score_fold

    t = score_fold(a.model, a.manifest, a.out_csv, a.out_maps, figure_cases=a.figure_cases, device=a.device,
                   batch_size=a.batch_size, threads=a.threads, out_loc=a.out_loc,
                   out_errors=a.out_errors, error_cases=a.error_cases,
                   pixel_negative_rate=a.pixel_negative_rate, loc_seed=a.loc_seed,
                   pixel_specificity=a.pixel_specificity, in_memory=a.in_memory,
                   memory_budget_gb=a.memory_budget_gb, test_manifest=a.test_manifest or None)
    logging.info("scored %d slices", len(t))


def cmd_export(a) -> None:
    from .. import config
    from ..predict.export import export_model
    from ..training.runinfo import git_commit
    from . import _version

    cfg = config.load(a.config, *a.configfile)
    got = export_model(a.results, a.method, a.fold, a.out, preprocess=cfg.get("preprocess", {}),
                       table=cfg.get("table", {}), software={"ichbench": _version(), **git_commit()})
    pre = got["preprocessing"]
    logging.info("exported %s fold %d to %s: %d x %d x %d slices (%s), series choice min_slices %s, "
                 "min_extent_mm %s, non_hu %s%s", a.method, a.fold, a.out, pre["channels"], pre["image_size"],
                 pre["image_size"], ", ".join(w["name"] for w in pre["windows"]), pre["min_slices"],
                 pre["min_extent_mm"], pre["non_hu"],
                 f"; reference: {got['reference']['n']} validation normal slices" if got["reference"] else "")


def cmd_predict(a) -> None:
    import torch

    from ..predict.run import predict

    if a.threads:
        torch.set_num_threads(a.threads)
    predict(a.model, a.out, dicom_dir=a.dicom_dir, nifti=a.nifti, device=a.device, batch_size=a.batch_size,
            workers=a.workers)


def data_access_options(s) -> None:
    """--in-memory and --memory-budget-gb of train and score (train.in_memory, train.memory_budget_gb)."""
    s.add_argument("--in-memory", default="auto", choices=["auto", "true", "false"],
                   help="load the fold's slices (true), gather each batch from the slice store (false), or "
                        "load them when they fit --memory-budget-gb (auto); the results are the same")
    s.add_argument("--memory-budget-gb", type=float, default=4.0,
                   help="with --in-memory auto: the most GB of slices (images and masks) loaded into memory")


def add_commands(command) -> None:
    """Register this group's subcommands through `command(name, help, func)` (see `build_parser`)."""
    s = command("train", "train one method on one fold", cmd_train)
    s.add_argument("--method", required=True, help="Table 1 row (see `ichbench methods`)")
    s.add_argument("--params", help="JSON of hyper-parameters (see `ichbench params`)")
    s.add_argument("--class", dest="method_class", metavar="MODULE:ATTR",
                   help="the row's class, for a row from outside the package (config `class:`; "
                        "docs/your-method.md)")
    s.add_argument("--check-contract", action="store_true",
                   help="dry-run the row contract on two training slices before training also for a built-in "
                        "row (always done for a row from outside the package)")
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
    data_access_options(s)

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
    s.add_argument("--out-errors", help="NPZ of the maps of the fold's worst misses at its validation threshold")
    s.add_argument("--error-cases", type=int, default=5,
                   help="false negatives and false positives (each) whose maps --out-errors keeps")
    s.add_argument("--pixel-specificity", type=float, default=0.999,
                   help="pixel threshold = this quantile of the validation normal slices' map pixels")
    s.add_argument("--pixel-negative-rate", type=float, default=0.0625,
                   help="share of non-hemorrhage pixels sampled for pixel AUROC / Dice")
    s.add_argument("--loc-seed", type=int, default=0, help="seed of that pixel sample")
    s.add_argument("--test-manifest", help="an external set's manifest.csv (`external-manifest`): its slices are "
                                           "scored in place of the fold's test part (evaluation.external)")
    data_access_options(s)

    s = command("export", "write one trained row and fold as a single model file for `predict`", cmd_export)
    s.add_argument("--method", required=True, help="Table 1 row (as under results/models/)")
    s.add_argument("--fold", type=int, required=True, help="the fold whose model is exported")
    s.add_argument("--out", required=True, help="the file to write, e.g. ae-u.pt")
    s.add_argument("--results", default="results",
                   help="the run's results folder (models/ROW/fold-K/model.pt, splits/, scores/)")
    s.add_argument("--config", default="config.yaml",
                   help="the run's config file: its preprocess (series choice, non-HU policy) and table blocks")
    s.add_argument("--configfile", nargs="+", default=[],
                   help="further config files the run merged on top, as `snakemake --configfile`")

    s = command("predict", "score one new scan with an exported row: slice scores, NIfTI map, montage", cmd_predict)
    s.add_argument("--model", required=True, help="a file written by `ichbench export`")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--dicom-dir", help="folder of one scan's DICOM files (searched recursively)")
    src.add_argument("--nifti", help="one CT volume in HU (.nii or .nii.gz)")
    s.add_argument("--out", required=True,
                   help="folder for slice_scores.csv, anomaly_map.nii.gz, montage.png, prediction.json")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--batch-size", default="auto", help="slices per scoring batch: a whole number, or auto")
    s.add_argument("--workers", type=int, default=1, help="worker processes reading DICOM headers")
    s.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
