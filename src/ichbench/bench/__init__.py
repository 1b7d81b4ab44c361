"""Throughput benchmarks: every row's training loop against a bare PyTorch loop, generators CPU against device, concurrent jobs per device.

Also the pipeline's stages on synthetic cohorts of growing size (`scale`, `scale_report`: `ichbench bench-scale`).

Measures, never used by a pipeline job.

May import: errors, inputs, synthetic, anomalies, nets, methods, training.
"""
