"""The synthetic-anomaly generators of the self-supervised rows, on the CPU (two_stage, one_stage) and batched on the device (device, device_ops), and their colour jitter.

Pure image operations on batches of slices: no networks, no training loop, no files.

May import: errors, inputs.
"""
