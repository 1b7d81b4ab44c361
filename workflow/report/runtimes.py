"""Snakemake `script:` of rule `runtimes`: every job's benchmark file -> one CSV table for the report.

One row per job: the job (its benchmark path below benchmarks/ without .tsv: the step and its method,
fold or shard), wall time, CPU time, peak memory and mean CPU load, as `benchmark:` measured them.
"""
import csv
import os
import sys

COLUMNS = {"s": "seconds", "cpu_time": "cpu_seconds", "max_rss": "max_rss_mb", "mean_load": "mean_load_percent"}


def collect(paths, out_csv, root="benchmarks"):
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            records = list(csv.DictReader(f, delimiter="\t"))
        if not records:
            continue
        rec = records[-1]  # a benchmark with repeat(n) has n lines: keep the last
        job = os.path.splitext(os.path.relpath(path, root))[0]
        row = {"job": job.replace(os.sep, "/")}
        for src, dst in COLUMNS.items():
            row[dst] = rec.get(src, "")
        rows.append(row)
    os.makedirs(os.path.dirname(out_csv) or ".", exist_ok=True)
    with open(out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["job", *COLUMNS.values()])
        w.writeheader()
        w.writerows(rows)
    return rows


if "snakemake" in globals():
    with open(snakemake.log[0], "w") as log:  # noqa: F821
        sys.stderr = log
        rows = collect(list(snakemake.input), snakemake.output[0])  # noqa: F821
        print(f"{len(rows)} jobs", file=log)
