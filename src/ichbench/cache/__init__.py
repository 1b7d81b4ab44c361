"""The slice cache: chosen series -> windowed 128 x 128 slices, masks and pixel truth, one NPZ per series.

Joins the readers (inputs) with a dataset's pixel truth (datasets) and writes what every later stage reads.

May import: errors, inputs, datasets.
"""
