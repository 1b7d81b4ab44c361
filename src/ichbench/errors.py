"""Errors every room may raise for a user to read: a bad configuration, a refused model file (imports nothing).

May import: nothing.
"""


class ConfigError(ValueError):
    """The configuration (config.yaml, a --config override) asks for something the pipeline cannot do."""


class ModelFileError(ValueError):
    """A model or checkpoint file that ichbench will not open: it holds code, or it is not a readable file."""
