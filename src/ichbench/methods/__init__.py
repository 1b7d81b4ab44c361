"""The Table 1 rows. Importing this package imports every module in it, and each module registers
its rows with `@register`: adding a method is one new module here plus one entry in config.yaml.

May import: errors, inputs, anomalies, nets.
"""
import importlib
import pkgutil

from .base import REGISTRY, Method, get_method, register

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["REGISTRY", "Method", "get_method", "register"]
