"""Reading the experiment configuration and resolving each method's hyper-parameters.

A method's hyper-parameters are, from weakest to strongest:
    the method's code defaults (the paper's / reference's values)
    < recipes[recipe]["all"] < recipes[recipe][method] < methods[method] in config.yaml.
So `recipe: paper` or `recipe: demo` switches the training recipe of every row at once, and a key
under `methods:` always wins. One exception: a row with its own reference recipe (the two-stage rows:
SGD lr 0.03, 100 epochs of 256 steps) lists those keys in its class's `own_recipe`, and `all` does not
change them; a recipe changes them only by naming the row (`recipes.<recipe>.<row>`).

May import: errors, methods.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"



def _fill_defaults(schema: dict, instance: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(sub, instance[key])


def validate(config: dict, schema_path: str | Path = SCHEMA) -> dict:
    """Validate against the JSON schema and fill in defaults (as snakemake.utils.validate does)."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    cfg = copy.deepcopy(config)
    _fill_defaults(schema, cfg)
    try:
        jsonschema.validate(cfg, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ConfigError(f"config error at {where}: {exc.message}") from None
    check_methods(cfg)
    return cfg


def merge(base: dict, update: dict) -> dict:
    """`update` merged into `base` in place the way Snakemake merges `--configfile`s (its update_config):
    mappings merge key by key, everything else (lists included) replaces."""
    for key, value in update.items():
        if isinstance(value, dict):
            sub = base.get(key, {})
            base[key] = merge(sub if isinstance(sub, dict) else {}, value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load(*paths: str | Path) -> dict:
    """The configuration Snakemake runs with for `configfile: paths[0]` and `--configfile paths[1:]`."""
    cfg: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            layer = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(layer, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
        merge(cfg, layer)
    return validate(cfg)


def selected_rows(cfg: dict) -> list[str]:
    """The rows to run: `rows` (in the order of `methods`, Table 1's) or, when null, every row under `methods`."""
    rows = cfg.get("rows")
    if rows is None:
        return list(cfg["methods"])
    return [m for m in cfg["methods"] if m in set(rows)]


def method_class(cfg: dict, method: str) -> str | None:
    """The `class: module:attribute` of a row from outside the package, as written under `methods:`."""
    entry = cfg.get("methods", {}).get(method)
    return entry.get("class") if isinstance(entry, dict) else None


def check_methods(cfg: dict) -> None:
    """Every row under `methods:` resolved (built-in, `class:` or an installed plugin's entry point; a
    ConfigError for an unknown one or a name defined twice), and the keys that name rows."""
    from .methods import REGISTRY
    from .methods.plugins import entry_points, resolve

    unknown = []
    for m in cfg.get("methods", {}):
        spec = method_class(cfg, m)
        if spec is None and m not in REGISTRY and not entry_points(m):
            unknown.append(m)
        else:
            resolve(m, spec)
    if unknown:
        raise ConfigError(f"config: unknown method(s) {unknown}; registered methods: {', '.join(REGISTRY)}; "
                          f"a row from outside the package names its class (class: my_package.rows:MyRow) "
                          f"or is registered by an installed package (docs/your-method.md)")
    missing = [r for r in (cfg.get("rows") or []) if r not in cfg.get("methods", {})]
    if missing:
        raise ConfigError(f"config: rows {missing} are not configured under methods "
                          f"({', '.join(cfg.get('methods', {}))})")
    compare = (cfg.get("table") or {}).get("compare")
    if compare is not None and compare not in selected_rows(cfg):
        raise ConfigError(f"config: table.compare {compare!r} is not one of the configured rows "
                          f"({', '.join(selected_rows(cfg))})")
    recipe = cfg.get("recipe")
    if recipe not in cfg.get("recipes", {}):
        raise ConfigError(f"config: recipe {recipe!r} is not defined under recipes ({', '.join(cfg.get('recipes', {}))})")


def method_params(cfg: dict, method: str) -> dict[str, Any]:
    """The resolved hyper-parameters of one method (only keys that differ from nothing: all of them)."""
    from .methods import get_method
    from .methods.base import PRECISIONS

    cls = get_method(method)
    recipe = cfg["recipes"][cfg["recipe"]]
    merged = dict(cls.full_defaults())
    shared = {k: v for k, v in recipe.get("all", {}).items() if k not in cls.own_recipe}
    own = {k: v for k, v in (cfg["methods"].get(method) or {}).items() if k != "class"}
    for layer in (shared, recipe.get(method, {}), own):
        for k, v in layer.items():
            if k not in merged:
                raise ConfigError(f"config: {method} has no hyper-parameter {k!r}; known: {sorted(merged)}")
            merged[k] = v
    if merged.get("precision") not in PRECISIONS:
        raise ConfigError(f"config: {method}: precision must be one of {sorted(PRECISIONS)}, "
                          f"not {merged.get('precision')!r}")
    return merged


def params_json(cfg: dict, method: str) -> str:
    """Canonical JSON of a method's parameters (sorted keys): the Snakemake param that triggers reruns."""
    return json.dumps(method_params(cfg, method), sort_keys=True)
