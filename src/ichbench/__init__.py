"""ichbench: unsupervised anomaly detection of intracranial hemorrhage in brain CT, benchmarked."""
__version__ = "0.1.0"
