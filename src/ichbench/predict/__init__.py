"""A trained row on new scans, without Snakemake: the exported model file, then one scan to scores, NIfTI map, montage.

One file per trained row and fold (`export`); a scan through the pipeline's own index, series choice, cache and
scoring (`scan`, `run`) to per-slice scores, an anomaly map in the scan's geometry (`volume`) and a montage
(`outputs`).

Sits above the engine (training) and the slice cache (cache), which training may not import; only the command
line imports it.

May import: errors, inputs, cache, cohort, methods, training.
"""
