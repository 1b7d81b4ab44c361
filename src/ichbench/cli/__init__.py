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
    python -m ichbench floor --out results/floor.csv --gpu "NVIDIA H200"   # FLOPs per row, the recipe's floor
    python -m ichbench export --method AE-U --fold 0 --out ae-u.pt     # one trained row as one file
    python -m ichbench predict --model ae-u.pt --dicom-dir SCAN/ --out OUT/   # ... on a new scan (or --nifti)

`snakemake` runs exactly these commands (see workflow/rules/). One module per group of subcommands
(data, runs, results, tools, external), each a thin parser over the rooms' functions.

May import: every room.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import data, external, results, runs, tools


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and shows every option's default."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ichbench")
    except PackageNotFoundError:                      # run from src/ without installation
        return __import__("ichbench").__version__


class _VersionAction(argparse.Action):
    """--version, the version looked up only when asked (importlib.metadata costs every command 27 ms)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ichbench", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--version", action=_VersionAction, help="show the version and exit")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and a full traceback instead of a one-line error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)
        s.set_defaults(func=func)
        return s

    for group in (data, runs, results, tools, external):
        group.add_commands(command)
    return p


def _said(exc: BaseException) -> bool:
    """Whether an error is one of those a command reports as one line (bad input, configuration, files).
    The modules defining the input errors are not imported for this: an error of theirs can only come from a
    module already loaded, and importing them costs every job a second (pydicom, the label readers)."""
    from ..errors import ConfigError

    kinds: list[type] = [ConfigError, FileNotFoundError, ValueError, RuntimeError]
    for module, name in (("ichbench.datasets.labels", "LabelError"), ("ichbench.inputs.dicomio", "DicomReadError")):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return isinstance(exc, tuple(kinds))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from ..training.heap import keep_freed_memory

    keep_freed_memory()     # training and scoring steps reuse freed activations instead of faulting them in again
    try:
        args.func(args)
    except Exception as exc:    # noqa: BLE001 - only the kinds _said() names are said; the rest is raised
        if args.verbose or not _said(exc):
            raise
        print(f"ichbench {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0

