"""Digest of the source code a method's results depend on (a Snakemake param: editing a row's code reruns it)."""
from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

from ..methods import get_method

# The shared training loop, read as a file rather than imported: ichbench.training.train itself uses the digest.
TRAIN_LOOP = Path(__file__).with_name("train.py")


def _in(mod, roots: set[str]) -> bool:
    return any(mod.__name__ == r or mod.__name__.startswith(r + ".") for r in roots)


def _source_modules(cls: type) -> set:
    """Modules whose source a method's behaviour depends on: those of its class hierarchy and, transitively,
    the modules, classes and functions they import from ichbench, from the row's own package (a row from
    outside ichbench: the top-level package of its class) and from its `digest_packages` (so that a helper
    split out of a module the row uses, e.g. the device generators' `device_ops`, still reruns the row when
    it is edited)."""
    roots = {"ichbench", cls.__module__.split(".")[0], *getattr(cls, "digest_packages", ())}
    found = set()
    for klass in cls.__mro__:
        mod = inspect.getmodule(klass)
        if mod is not None and _in(mod, roots):
            found.add(mod)
    todo = list(found)
    while todo:
        for value in vars(todo.pop()).values():
            dep = value if inspect.ismodule(value) else inspect.getmodule(value) if (
                inspect.isclass(value) or inspect.isfunction(value)) else None
            if dep is not None and _in(dep, roots) and dep not in found:
                found.add(dep)
                todo.append(dep)
    return found


def source_files(name: str) -> dict[str, str]:
    """Module name -> source file of everything in a row's code digest (for `ichbench check-method`)."""
    files = {mod.__name__: inspect.getsourcefile(mod) or "?" for mod in _source_modules(get_method(name))}
    files["ichbench.training.train"] = str(TRAIN_LOOP)
    return dict(sorted(files.items()))


def code_digest(name: str) -> str:
    """Digest of the source a method's results depend on (its modules, the networks they import and
    the shared training loop)."""
    sources = {mod.__name__: inspect.getsource(mod) for mod in _source_modules(get_method(name))}
    sources["ichbench.training.train"] = TRAIN_LOOP.read_text()
    h = hashlib.sha256()
    for mod_name in sorted(sources):
        h.update(mod_name.encode())
        h.update(sources[mod_name].encode())
    return h.hexdigest()[:16]
