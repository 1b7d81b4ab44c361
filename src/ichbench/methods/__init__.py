"""The Table 1 rows. Importing this package imports every module in it, and each module registers
its rows with `@register`: adding a method is one new module here plus one entry in config.yaml. Rows from
other packages (a `class:` under methods, or an entry point of group `ichbench.methods`) are found by
`plugins` when a run names them; `contract` checks every row against the contract (docs/your-method.md).

May import: errors, inputs, anomalies, nets.
"""
import importlib
import pkgutil

from .base import REGISTRY, Method, get_method, register

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["REGISTRY", "Method", "get_method", "register"]
