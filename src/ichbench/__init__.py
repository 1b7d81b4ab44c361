"""ichbench: unsupervised anomaly detection of intracranial hemorrhage in brain CT, benchmarked.

The rooms, in the order one slice passes them: inputs, datasets, cache, cohort, anomalies, nets, methods, training,
evaluation; bench and synthetic beside them; config and cli on top (docs/development.md, "The house").

May import: nothing.
"""
__version__ = "0.1.0"
