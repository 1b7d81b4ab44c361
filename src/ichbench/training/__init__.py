"""Running a row on a fold: the shared training loop, scoring, slice batches, determinism, heap settings, code digests and the run record.

The engine between the Table 1 rows (methods) and the files a job writes; it knows no particular row.

May import: errors, inputs, cohort, anomalies, nets, methods, evaluation.
"""
