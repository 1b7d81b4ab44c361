"""Errors every room may raise for a user to read: a bad configuration (the top of the house; imports nothing).

May import: nothing.
"""


class ConfigError(ValueError):
    """The configuration (config.yaml, a --config override) asks for something the pipeline cannot do."""
