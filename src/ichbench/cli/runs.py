"""Subcommands that run one Table 1 row on one fold: train, score."""
from __future__ import annotations

import json
import logging
import sys


def cmd_train(a) -> None:
    from ..training.train import train

    rec = train(a.method, json.loads(a.params) if a.params else {}, a.manifest, a.out, device=a.device,
                seed=a.seed, checkpoint_every=a.checkpoint_every, checkpoint_seconds=a.checkpoint_seconds,
                threads=a.threads,
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
                   pixel_specificity=a.pixel_specificity)
    logging.info("scored %d slices", len(t))


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
