"""Rows from outside the package: a `class: module:attribute` under a `methods:` entry, or an entry point of the
group `ichbench.methods` (name = the row, value = `module:attribute`) declared by an installed distribution.

Only the rows a run names are imported: the entry points are read from the installed distributions' metadata
(no import), and a plugin module is imported when its row is asked for. Two definitions of one row name (a
built-in row and a plugin, two plugins, a `class:` and an entry point naming different classes) are an error
naming both, never a silent choice. The class is checked against the contract (`contract.check_class`) as it
is loaded; `docs/your-method.md` describes what a row implements.
"""
from __future__ import annotations

import functools
import importlib
import re
from importlib import metadata
from typing import Any

from ..errors import ConfigError
from .base import REGISTRY, Method
from .contract import check_class

GROUP = "ichbench.methods"
#: row name -> where it came from (a human-readable source); rows not listed are built in
SOURCES: dict[str, str] = {}
#: row name -> `module:attribute` of a row loaded from outside the package (recorded in model.pt)
SPECS: dict[str, str] = {}
_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def source_of(name: str) -> str:
    """Where a registered row comes from, for messages."""
    if name in SOURCES:
        return SOURCES[name]
    cls = REGISTRY.get(name)
    return f"the built-in row in {cls.__module__}" if cls is not None else "nowhere (not registered)"


def _is_ichbench(cls: type) -> bool:
    return cls.__module__ == "ichbench" or cls.__module__.startswith("ichbench.")


def _builtin(row: str) -> type[Method] | None:
    cls = REGISTRY.get(row)
    return cls if cls is not None and _is_ichbench(cls) else None


def is_external(name: str) -> bool:
    """Whether a registered row's class lives outside ichbench (a `class:`, an entry point, a plugin's own
    `@register`)."""
    cls = REGISTRY.get(name)
    return cls is not None and not _is_ichbench(cls)


def spec_of(name: str) -> str | None:
    """`module:attribute` of an external row (what `ichbench train --class` and model.pt carry), else None."""
    cls = REGISTRY.get(name)
    if cls is None or _is_ichbench(cls):
        return None
    return SPECS.get(name) or f"{cls.__module__}:{cls.__qualname__}"


@functools.lru_cache(maxsize=1)
def _entry_points() -> tuple[tuple[str, str, str], ...]:
    """(row name, value, distribution) of the group's entry points: metadata only, nothing is imported."""
    found = []
    for ep in metadata.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        label = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "an unnamed distribution"
        found.append((ep.name, ep.value.replace(" ", ""), label))
    return tuple(sorted(set(found)))


def clear_cache() -> None:
    """Forget the entry points read so far (after installing a distribution in the same process)."""
    _entry_points.cache_clear()


def entry_points(name: str | None = None) -> list[tuple[str, str, str]]:
    """The group's entry points, all or those of one row name: (name, `module:attribute`, distribution)."""
    return [ep for ep in _entry_points() if name is None or ep[0] == name]


def _import(spec: str, row: str, source: str) -> type[Method]:
    if not isinstance(spec, str) or not _SPEC.match(spec.strip()):
        raise ConfigError(f"row {row!r} ({source}): class must be written module:attribute "
                          f"(e.g. my_package.rows:MyRow), not {spec!r}")
    module_name, attr = spec.strip().split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"row {row!r} ({source}): cannot import module {module_name!r}: {exc}. Is its "
                          f"package installed, or its folder on PYTHONPATH?") from None
    except Exception as exc:  # noqa: BLE001 - any error while a plugin module runs is the plugin's
        raise ConfigError(f"row {row!r} ({source}): importing {module_name!r} failed: "
                          f"{type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"row {row!r} ({source}): module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _register(row: str, cls: Any, spec: str, source: str) -> type[Method]:
    """Check a loaded class and register it under `row` (its `name` is set to `row` when it has none)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"row {row!r} ({source}): {spec} is not a subclass of ichbench.methods.Method "
                          f"(it is {cls!r})")
    own = cls.__dict__.get("name")
    if own is None:
        cls.name = row
    elif own != row:
        raise ConfigError(f"row {row!r} ({source}): the class {spec} is named {own!r}; the row name under "
                          f"methods: (or the entry point's name) must be its name")
    check_class(cls)
    present = REGISTRY.get(row)
    if present is not None and present is not cls:
        raise ConfigError(f"row {row!r} is defined twice: by {source_of(row)} and by {source}; "
                          f"rename one of them")
    REGISTRY[row] = cls
    SPECS[row] = spec
    SOURCES.setdefault(row, source)
    return cls


def _entry_point_of(row: str) -> tuple[str, str] | None:
    """(`module:attribute`, source) of the entry point defining a row, None without one; an error naming both
    distributions when two define it differently."""
    eps = entry_points(row)
    values = sorted({v for _, v, _ in eps})
    if len(values) > 1:
        both = " and by ".join(f"entry point {row} = {v} of distribution {d}" for _, v, d in eps)
        raise ConfigError(f"row {row!r} is defined twice: by {both}; uninstall or rename one of them")
    if not eps:
        return None
    _, value, dist = eps[0]
    return value, f"entry point {row} = {value} of distribution {dist}"


def resolve(row: str, spec: str | None = None, where: str | None = None) -> type[Method]:
    """The class of a row: `spec` (`module:attribute`, given by `where`: default the config's `class:`), else
    the registry, else an entry point. A name defined twice in different ways is a ConfigError naming both."""
    builtin = _builtin(row)
    ep = _entry_point_of(row)
    if spec is not None:
        source = f"class {spec} ({where or f'class: under methods.{row} in the config'})"
        if builtin is not None:
            raise ConfigError(f"row {row!r} is defined twice: by {source_of(row)} and by {source}; "
                              f"give your row another name")
        if ep is not None and ep[0] != spec.strip():
            raise ConfigError(f"row {row!r} is defined twice: by {ep[1]} and by {source}; "
                              f"give your row another name or drop one of them")
        if row in SPECS and SPECS[row] != spec.strip():
            raise ConfigError(f"row {row!r} is defined twice: by {source_of(row)} and by {source}")
        return _register(row, _import(spec, row, source), spec.strip(), source)
    if builtin is not None:
        if ep is not None:
            raise ConfigError(f"row {row!r} is defined twice: by {source_of(row)} and by {ep[1]}; "
                              f"the plugin must give its row another name")
        return builtin
    if row in REGISTRY:
        return REGISTRY[row]
    if ep is None:
        raise ConfigError(f"unknown method {row!r}: not a built-in row ({', '.join(builtin_rows())}), "
                          f"no `class:` under methods.{row} and no installed entry point of group {GROUP} "
                          f"named {row!r}")
    return _register(row, _import(ep[0], row, ep[1]), ep[0], ep[1])


def builtin_rows() -> list[str]:
    return [n for n, c in REGISTRY.items() if _is_ichbench(c)]


def all_plugin_rows() -> dict[str, str | None]:
    """Load every installed plugin row (for `ichbench methods`: this one imports them all): row name -> None
    when it loaded, else why not (one broken plugin does not hide the others)."""
    status: dict[str, str | None] = {}
    for name in sorted({name for name, _, _ in entry_points()}):
        try:
            resolve(name)
            status[name] = None
        except ValueError as exc:            # ConfigError, ContractError: said, not raised
            status[name] = str(exc)
    return status
