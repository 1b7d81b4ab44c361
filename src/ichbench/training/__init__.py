"""Running a row on a fold: training loop, scoring, slice batches (in memory or from the slice store), determinism, heap, code digests, run record, safe model files.

The engine between the Table 1 rows (methods) and the files a job writes; it knows no particular row.

May import: errors, inputs, cache, cohort, anomalies, nets, methods, evaluation.
"""
