"""Subcommands for looking inside: the registered rows, their resolved parameters, the throughput and scale
benches, the arithmetic floor."""
from __future__ import annotations

import logging
from pathlib import Path


def cmd_methods(a) -> None:
    from ..methods import REGISTRY
    from ..methods.plugins import all_plugin_rows, is_external, source_of
    from ..training.digest import code_digest

    broken = {k: v for k, v in all_plugin_rows().items() if v}   # the installed plugins' rows (all imported)
    for name, cls in REGISTRY.items():
        where = f"  [{source_of(name)}]" if is_external(name) else ""
        print(f"{name:18s} {cls.group:16s} {code_digest(name)}  {cls.paper}{where}")
    for name, why in broken.items():
        print(f"{name:18s} {'(not loaded)':16s} {'-' * 16}  {why}")


def cmd_check_method(a) -> None:
    """Dry-run a row's contract on toy head slices: build, one training step, fit_end, score, state."""
    import json

    import torch

    from .. import config
    from ..methods import get_method
    from ..methods.contract import dry_run
    from ..methods.plugins import resolve, source_of
    from ..synthetic.toy import toy_head_slices
    from ..training.digest import code_digest, source_files
    from ..training.train import resolve_device

    params = {}
    if a.config:
        cfg = config.load(a.config, *a.configfile)
        if a.row not in cfg["methods"]:
            raise config.ConfigError(f"{a.config}: no row {a.row!r} under methods ({', '.join(cfg['methods'])})")
        params = config.method_params(cfg, a.row)
    elif a.method_class:
        resolve(a.row, a.method_class, where="given by --class")
    if a.params:
        params.update(json.loads(a.params))
    cls = get_method(a.row)
    dev = resolve_device(a.device)
    images, heads, brains = toy_head_slices(2, size=a.size, seed=0)
    batch = {"x": torch.from_numpy(images[:, : a.channels]).to(dev)}
    masks = {"head_mask": heads, "brain_mask": brains}
    batch.update({k: torch.from_numpy(masks[k]).to(dev) for k in cls.needs})
    dry_run(cls, params, batch)
    print(f"{a.row}: the row contract holds (build, one training step, fit_end, score, state on 2 toy slices "
          f"of {a.channels}x{a.size}x{a.size} on {dev})")
    print(f"  source: {source_of(a.row)}")
    print(f"  code digest {code_digest(a.row)} over:")
    for mod, path in source_files(a.row).items():
        print(f"    {mod:40s} {path}")


def cmd_params(a) -> None:
    from .. import config

    cfg = config.load(a.config, *a.configfile)
    for m in config.selected_rows(cfg):
        print(m, config.params_json(cfg, m))


def cmd_bench(a) -> None:
    from ..bench.throughput import run_bench

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    levels = None
    if a.concurrent:
        from ..bench.concurrent import parse_levels

        levels = parse_levels(a.concurrent)
    if not a.concurrent_only:
        rows = run_bench(a.out, size=a.size, batch=a.batch, seconds=a.seconds, device=a.device,
                         rows=a.rows or None, workers=a.workers, precision=a.precision,
                         peak_tflops=a.peak_tflops)
        last = rows[-1]
        floor = (f"{last['floor_hours']:.2f} h at the arithmetic floor" if "floor_hours" in last
                 else f"floor: {last.get('floor_note') or 'not counted'}")
        logging.info("bench written to %s; projected paper-recipe Table 1: %.2f h on %s (%.2f EFLOP; %s)", a.out,
                     last["table1_hours"], last["device"], last.get("recipe_eflop", 0.0), floor)
    if levels:
        from ..bench.concurrent import run_concurrent

        out = Path(a.out).with_name(Path(a.out).stem + "-concurrent.csv")
        got = run_concurrent(out, levels, row=a.concurrent_row, device=a.device, size=a.size, batch=a.batch,
                             seconds=a.concurrent_seconds)
        logging.info("concurrent training written to %s: %s", out,
                     ", ".join(f"{r['processes']} x: {r['img_s_total'] or 0:.1f} img/s" for r in got))


def cmd_floor(a) -> None:
    from ..bench.floor import run_floor

    rows = run_floor(a.out, size=a.size, device=a.device, rows=a.rows or None, precision=a.precision,
                     gpu=a.gpu, peak_tflops=a.peak_tflops)
    last = rows[-1]
    hours = f"{last['floor_hours']:.2f} h" if "floor_hours" in last else "unknown (no peak)"
    logging.info("floor written to %s: paper recipe %.3f EFLOP, floor %s; %s", a.out, last["recipe_eflop"],
                 hours, last["peak_source"])


def cmd_bench_scale(a) -> None:
    from ..bench.scale import parse_sizes, parse_slices_per_scan, run_scale
    from ..bench.scale_report import format_tables

    per_scan = parse_slices_per_scan(a.slices_per_scan)
    sizes = parse_sizes(a.sizes, per_scan)
    for layout in a.layout:
        result = run_scale(layout, sizes, a.out, workers=a.workers, threads=a.threads, image_size=a.image_size,
                           slices_per_scan=per_scan, keep=a.keep, until=a.until)
        print(format_tables(result), flush=True)
        logging.info("bench-scale %s written to %s/bench-scale-%s.{csv,json,md}", layout, a.out, layout)


def add_commands(command) -> None:
    """Register this group's subcommands through `command(name, help, func)` (see `build_parser`)."""
    command("methods", "list the registered methods (built-in and installed plugins') and their code digests",
            cmd_methods)

    s = command("check-method", "dry-run one row's contract (build, a training step, fit_end, score) on two toy "
                                "slices, and list the files of its code digest", cmd_check_method)
    s.add_argument("row", help="the row's name (built-in, an installed plugin's, or with --class / --config)")
    s.add_argument("--class", dest="method_class", metavar="MODULE:ATTR",
                   help="the row's class, for a row from outside the package not in a config")
    s.add_argument("--config", help="a config file: the row's `class:` and resolved hyper-parameters from it")
    s.add_argument("--configfile", nargs="+", default=[], help="further config files merged on top in order")
    s.add_argument("--params", help="JSON of hyper-parameters on top")
    s.add_argument("--size", type=int, default=64, help="slice size of the toy slices")
    s.add_argument("--channels", type=int, default=3, choices=[1, 2, 3], help="channels (windows) per slice")
    s.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N")

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
    s.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="every row's precision (default: each row's own, fp32); also picks the floor's peak")
    s.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOP/s for the floor columns (default: the table in "
                        "ichbench.bench.floor for a known GPU; unknown on a CPU)")
    s.add_argument("rows", nargs="*", help="rows to time (default: all registered)")

    s = command("floor", "the paper recipe's arithmetic floor: every row's FLOPs per image (counted with "
                         "torch's FlopCounterMode), recipe EFLOP, hours at a device's peak (CSV)", cmd_floor)
    s.add_argument("--out", default="results/floor.csv", help="CSV to write")
    s.add_argument("--size", type=int, default=128, help="slice size to count at (the paper's 128)")
    s.add_argument("--device", default="cpu", help="where to run the counted steps: cpu, cuda or cuda:N")
    s.add_argument("--gpu", default=None,
                   help="peaks of this GPU from the table, e.g. 'NVIDIA H200' (default: the --device's, if CUDA)")
    s.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="the precision the floor assumes for every row (default: each row's own, fp32)")
    s.add_argument("--peak-tflops", type=float, default=None, help="one peak TFLOP/s for every FLOP instead")
    s.add_argument("rows", nargs="*", help="rows to count (default: all registered)")

    s = command("bench-scale", "write synthetic cohorts of given sizes, run the pipeline's stages on each and "
                               "print per stage slices/s per core, peak memory, growth between the sizes and a "
                               "projection to CQ500 / RSNA size (CSV, JSON, Markdown)", cmd_bench_scale)
    s.add_argument("--layout", nargs="+", default=["cq500"], choices=["cq500", "rsna"],
                   help="cohort layout(s): cq500 (several series a scan) or rsna (one file a slice, stripped headers)")
    s.add_argument("--sizes", default="5000,50000", help="cohort sizes in slices, comma-separated, e.g. 2000,10000")
    s.add_argument("--out", default="results/bench-scale", help="folder for the cohorts, the runs and the tables")
    s.add_argument("--workers", type=int, default=1, help="worker processes of writing, index and preprocess")
    s.add_argument("--threads", type=int, default=1, help="torch threads of train and score")
    s.add_argument("--image-size", type=int, default=256,
                   help="pixels of the written slices (CQ500 and RSNA ship 512; 256 halves the writing time)")
    s.add_argument("--slices-per-scan", default="24,36",
                   help="MIN,MAX slices of a scan (drawn per scan; 13 at least, the 60 mm extent of 5 mm slices)")
    s.add_argument("--until", default="aggregate",
                   choices=["index", "labels", "preprocess", "split", "train", "score", "aggregate"],
                   help="the last stage to run (e.g. split: only the data stages; labels is RSNA's)")
    s.add_argument("--keep", action="store_true", help="keep each size's cohort and results (default: removed)")

    s = command("params", "print each row's resolved hyper-parameters, as the workflow passes them", cmd_params)
    s.add_argument("--config", default="config.yaml", help="the workflow's config file (Snakefile `configfile:`)")
    s.add_argument("--configfile", nargs="+", default=[],
                   help="further config files merged on top in order, as `snakemake --configfile` does "
                        "(mappings merge, lists replace)")
