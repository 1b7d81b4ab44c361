"""Rows from outside the package: `class:` under methods and the `ichbench.methods` entry points, name clashes,
the row contract checks (class, dry run at train start, score batches), the code digest of a plugin row, and
the worked example `examples/my_row` through the real Snakemake pipeline beside AE.

Nothing is pip-installed: the example's src folder goes on sys.path / PYTHONPATH, and an installed distribution
is faked by a `*.dist-info` folder (METADATA + entry_points.txt) on the path.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ichbench import config
from ichbench.errors import ConfigError
from ichbench.methods import REGISTRY, Method, plugins
from ichbench.methods.contract import ContractError, check_class, check_score_batch, dry_run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_row"
SPEC = "my_row.rows:MyAE"


def fake_dist(folder: Path, name: str, entry_points: dict[str, str]) -> Path:
    """An 'installed' distribution: <folder>/<name>-0.1.dist-info with its entry points (group ichbench.methods)."""
    info = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[ichbench.methods]\n{lines}")
    return folder


@pytest.fixture
def plugin_path(monkeypatch):
    """The example on sys.path; afterwards the registry, the entry-point cache and sys.modules as before."""
    registry, specs, sources = dict(REGISTRY), dict(plugins.SPECS), dict(plugins.SOURCES)
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    plugins.clear_cache()
    yield monkeypatch
    for d, saved in ((REGISTRY, registry), (plugins.SPECS, specs), (plugins.SOURCES, sources)):
        d.clear()
        d.update(saved)
    plugins.clear_cache()
    for mod in [m for m in sys.modules if m == "my_row" or m.startswith("my_row.") or m.startswith("broken_")]:
        del sys.modules[mod]


def with_rows(methods: dict) -> dict:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["methods"] = methods
    cfg["rows"] = None
    return cfg


# -- resolving ---------------------------------------------------------------------------------------------


def test_class_entry_resolves_and_is_no_hyper_parameter(plugin_path):
    cfg = config.validate(with_rows({"AE": {}, "MyAE": {"class": SPEC, "width": 4}}))
    params = json.loads(config.params_json(cfg, "MyAE"))
    assert "class" not in params and params["width"] == 4 and params["l1_weight"] == 0.5
    assert plugins.is_external("MyAE") and not plugins.is_external("AE")
    assert plugins.spec_of("MyAE") == SPEC and plugins.spec_of("AE") is None
    assert REGISTRY["MyAE"].__module__ == "my_row.rows"


def test_entry_point_resolves_and_only_the_named_plugin_is_imported(plugin_path, tmp_path):
    # a second plugin whose module does not exist: never imported while no config names it
    plugin_path.syspath_prepend(str(fake_dist(tmp_path, "ichbench-my-row", {"MyAE": SPEC})))
    plugin_path.syspath_prepend(str(fake_dist(tmp_path / "b", "other-rows", {"Other": "no_such_module_xyz:Row"})))
    plugins.clear_cache()
    cfg = config.validate(with_rows({"AE": {}, "MyAE": {}}))
    assert config.selected_rows(cfg) == ["AE", "MyAE"]
    assert "ichbench-my-row 0.1" in plugins.source_of("MyAE") and plugins.spec_of("MyAE") == SPEC
    assert "no_such_module_xyz" not in sys.modules
    with pytest.raises(ConfigError, match=r"row 'Other' \(.*other-rows 0.1.*cannot import module 'no_such_module_xyz'"):
        config.validate(with_rows({"Other": {}}))
    # a `class:` equal to the entry point is the same row, not a clash; another class is one
    config.validate(with_rows({"MyAE": {"class": SPEC}}))
    with pytest.raises(ConfigError, match=r"'MyAE' is defined twice: by entry point MyAE = my_row.rows:MyAE of "
                                          r"distribution ichbench-my-row 0.1 and by class my_row.nets:SmallConvAE"):
        config.validate(with_rows({"MyAE": {"class": "my_row.nets:SmallConvAE"}}))


def test_methods_lists_installed_plugins_and_says_which_do_not_load(plugin_path, tmp_path, capsys):
    from ichbench import cli

    plugin_path.syspath_prepend(str(fake_dist(tmp_path, "ichbench-my-row", {"MyAE": SPEC, "Gone": "gone_xyz:R"})))
    plugins.clear_cache()
    assert cli.main(["methods"]) == 0
    out = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert {"AE", "AnatPaste", "MyAE", "Gone"} <= set(out)
    assert "reconstruction" in out["MyAE"] and "entry point MyAE = my_row.rows:MyAE" in out["MyAE"]
    assert "(not loaded)" in out["Gone"] and "cannot import module 'gone_xyz'" in out["Gone"]
    assert "[" not in out["AE"]


def test_unknown_row_says_how_to_add_one(plugin_path):
    with pytest.raises(ConfigError, match=r"unknown method.*NoSuchRow.*class: my_package.rows:MyRow"):
        config.validate(with_rows({"NoSuchRow": {}}))


def test_clash_with_a_built_in_row_names_both(plugin_path, tmp_path):
    with pytest.raises(ConfigError, match=r"'AE' is defined twice: by the built-in row in ichbench.methods.ae and "
                                          r"by class my_row.rows:MyAE"):
        config.validate(with_rows({"AE": {"class": SPEC}}))
    plugin_path.syspath_prepend(str(fake_dist(tmp_path, "sneaky-rows", {"AE": SPEC})))
    plugins.clear_cache()
    with pytest.raises(ConfigError, match=r"'AE' is defined twice: by the built-in row in ichbench.methods.ae and "
                                          r"by entry point AE = my_row.rows:MyAE of distribution sneaky-rows 0.1"):
        config.validate(with_rows({"AE": {}}))


def test_clash_between_plugins_names_both_distributions(plugin_path, tmp_path):
    plugin_path.syspath_prepend(str(fake_dist(tmp_path / "a", "rows-a", {"MyAE": SPEC})))
    plugin_path.syspath_prepend(str(fake_dist(tmp_path / "b", "rows-b", {"MyAE": "my_row.nets:SmallConvAE"})))
    plugins.clear_cache()
    with pytest.raises(ConfigError, match=r"'MyAE' is defined twice: by entry point .* of distribution rows-. 0.1 "
                                          r"and by entry point .* of distribution rows-. 0.1"):
        config.validate(with_rows({"MyAE": {}}))


def test_class_must_be_a_method_named_as_its_row(plugin_path):
    with pytest.raises(ConfigError, match=r"row 'Net'.*my_row.nets:SmallConvAE is not a subclass"):
        config.validate(with_rows({"Net": {"class": "my_row.nets:SmallConvAE"}}))
    with pytest.raises(ConfigError, match=r"row 'Other'.*is named 'MyAE'"):
        config.validate(with_rows({"Other": {"class": SPEC}}))
    with pytest.raises(ConfigError, match=r"has no attribute 'Nope'"):
        config.validate(with_rows({"MyAE": {"class": "my_row.rows:Nope"}}))
    with pytest.raises(ConfigError, match=r"(class must be written module:attribute|does not match)"):
        config.validate(with_rows({"MyAE": {"class": "my_row.rows.MyAE"}}))


# -- the contract ------------------------------------------------------------------------------------------


class _Good(Method):
    name, group = "Good", "reconstruction"

    def build(self):
        return torch.nn.Conv2d(self.in_channels, self.in_channels, 3, padding=1)

    def loss(self, batch):
        return torch.mean((batch["x"] - self.model(batch["x"])) ** 2), {}

    def score_map(self, batch):
        return (batch["x"] - self.model(batch["x"])) ** 2


def _batch(n=2, c=3, s=16, needs=()):
    g = torch.Generator().manual_seed(0)
    out = {"x": torch.rand(n, c, s, s, generator=g) * 2 - 1}
    out.update({k: torch.ones(n, s, s, dtype=torch.bool) for k in needs})
    return out


def _variant(name, **attrs):
    return type(name, (_Good,), {"name": name, **attrs})


def _noisy_loss(self, batch):
    """A loss drawing from all three generators, as the self-supervised rows' anomaly synthesis does."""
    import random

    noise = torch.rand_like(batch["x"]) * float(np.random.rand()) * random.random()
    return torch.mean((batch["x"] + noise - self.model(batch["x"])) ** 2), {}


def test_good_row_passes_and_the_dry_run_leaves_the_generators_alone():
    import random

    cls = _variant("Noisy", loss=_noisy_loss)
    check_class(cls)

    def draws():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    for seed in (5, 5):
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        expected = draws()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    dry_run(cls, {}, _batch())
    assert draws() == expected


def test_missing_methods_and_bad_attributes_fail_on_the_class():
    bare = type("Bare", (Method,), {"name": "Bare", "group": "reconstruction"})
    with pytest.raises(ContractError, match=r"row 'Bare' .*build\(\).*neither loss\(\) nor training_step\(\).*"
                                            r"neither score_map\(\) nor score\(\)"):
        check_class(bare)
    with pytest.raises(ContractError, match=r"row 'G' .*`group` must be one of"):
        check_class(_variant("G", group="other"))
    with pytest.raises(ContractError, match=r"`needs` must be a tuple"):
        check_class(_variant("N", needs=("skull",)))
    with pytest.raises(ContractError, match=r"`name` must be"):
        check_class(_variant("bad name/x"))


def _nan_map(self, batch):
    return torch.full_like(batch["x"], float("nan"))


@pytest.mark.parametrize("attrs,message", [
    ({"score_map": lambda self, b: (b["x"] - self.model(b["x"]))[:, :, ::2, ::2] ** 2},
     r"row 'Bad': .*map of shape \(2, 8, 8\); expected \(2, 16, 16\)"),
    ({"score_map": _nan_map}, r"row 'Bad'.*NaN or infinite slice scores"),
    ({"score": lambda self, b: (torch.zeros(3), torch.zeros(2, 16, 16))},
     r"row 'Bad'.*slice scores of shape \(3,\) for a batch of 2"),
    ({"score": lambda self, b: (torch.zeros(2, dtype=torch.long), torch.zeros(2, 16, 16))}, r"dtype torch.int64"),
    ({"score": lambda self, b: torch.zeros(2)}, r"must return a tuple"),
    ({"build": lambda self: torch.nn.Identity()}, r"row 'Bad'.*no trainable parameters"),
    ({"loss": lambda self, b: (self.model(b["x"]).mean() * float("nan"), {})}, r"non-finite.*\['loss'\]"),
    ({"loss": lambda self, b: (self.model(b["x"]).mean() + b["brain_mask"].float().mean(), {})},
     r"row 'Bad': training_step\(\) failed: batch key 'brain_mask' missing.*`needs`"),
    ({"extra_state": lambda self: {"fitted": object()}}, r"row 'Bad': its state .*only tensors and plain values"),
    ({"build": lambda self: 1 / 0}, r"row 'Bad': building the row .*ZeroDivisionError"),
])
def test_broken_rows_fail_the_dry_run_naming_the_row_and_the_fault(attrs, message):
    cls = _variant("Bad", **attrs)
    check_class(cls)
    with pytest.raises(ContractError, match=message):
        dry_run(cls, {}, _batch())


def test_score_batches_are_checked():
    check_score_batch("R", torch.zeros(4), torch.zeros(4, 8, 8), 4, 8)
    with pytest.raises(ContractError, match=r"row 'R'.*map of shape \(4, 1, 8, 8\)"):
        check_score_batch("R", torch.zeros(4), torch.zeros(4, 1, 8, 8), 4, 8)
    with pytest.raises(ContractError, match=r"row 'R'.*slice scores of shape \(4, 1\)"):
        check_score_batch("R", torch.zeros(4, 1), torch.zeros(4, 8, 8), 4, 8)


# -- train and score jobs ------------------------------------------------------------------------------------


def fake_fold(folder: Path, n: int = 4, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    npz = folder / "series.npz"
    mask = np.zeros((n, size, size), bool)
    mask[:, 4:-4, 4:-4] = True
    np.savez(npz, images=rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), head_mask=mask,
             brain_mask=mask, gt_mask=np.zeros_like(mask), has_gt=np.array(False))
    rows = []
    for part, label in (("train", 0), ("val", 0), ("test", 0), ("test", 1)):
        rows += [{"patient_id": f"P{part}{label}", "study_uid": "1", "series_uid": f"1.{part}{label}",
                  "sop_uid": f"1.{part}{label}.{i}", "npz": str(npz), "slice_index": i, "part": part,
                  "label": label, "scan_label": label, "slice_truth": label, "fold": 0} for i in range(n)]
    manifest = folder / "fold-0.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


BROKEN = '''
import torch
from ichbench.methods import Method


class HalfMap(Method):
    """Trains, but its map is half the slices' size."""
    name, group = "HalfMap", "reconstruction"
    defaults = {"nan_at_score": False}

    def build(self):
        return torch.nn.Conv2d(self.in_channels, self.in_channels, 3, padding=1)

    def loss(self, batch):
        return torch.mean((batch["x"] - self.model(batch["x"])) ** 2), {}

    def score_map(self, batch):
        err = (batch["x"] - self.model(batch["x"])) ** 2
        return err * float("nan") if self.params["nan_at_score"] else err[:, :, ::2, ::2]
'''


@pytest.fixture
def broken_module(plugin_path, tmp_path):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "broken_rows.py").write_text(BROKEN)
    plugin_path.syspath_prepend(str(tmp_path / "mods"))
    return tmp_path / "mods"


def test_train_checks_an_external_row_before_training(broken_module, tmp_path, one_torch_thread):
    from ichbench.training.train import train

    manifest = fake_fold(tmp_path)
    with pytest.raises(ContractError, match=r"row 'HalfMap': score\(\) returned a map of shape \(2, 8, 8\); "
                                            r"expected \(2, 16, 16\)"):
        train("HalfMap", {"epochs": 1, "batch_size": 2}, manifest, tmp_path / "out", device="cpu",
              method_class="broken_rows:HalfMap")
    assert not (tmp_path / "out" / "history.csv").exists()       # failed before the first epoch


def test_score_always_checks_maps(broken_module, tmp_path, one_torch_thread):
    from ichbench.training.score import score_fold
    from ichbench.training.train import train

    manifest = fake_fold(tmp_path)
    rec = train("HalfMap", {"epochs": 1, "batch_size": 2, "nan_at_score": True}, manifest, tmp_path / "out",
                device="cpu", method_class="broken_rows:HalfMap", check_contract=False)
    assert rec["class"] == "broken_rows:HalfMap"
    del REGISTRY["HalfMap"]             # as in a fresh score job: the class is found from the run record
    with pytest.raises(ContractError, match=r"row 'HalfMap': .*NaN or infinite slice scores"):
        score_fold(tmp_path / "out" / "model.pt", manifest, tmp_path / "s.csv", tmp_path / "m.npz", device="cpu")


def test_cli_check_method_and_train_fail_with_one_line(broken_module, tmp_path, capsys, one_torch_thread):
    from ichbench import cli

    assert cli.main(["check-method", "MyAE", "--class", SPEC, "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "MyAE: the row contract holds" in out and "my_row.nets" in out and "my_row.rows" in out
    assert cli.main(["check-method", "MyAE", "--size", "36"]) == 1
    err = capsys.readouterr().err
    assert "row 'MyAE': building the row" in err and "divisible by 8" in err
    manifest = fake_fold(tmp_path)
    assert cli.main(["train", "--method", "HalfMap", "--class", "broken_rows:HalfMap", "--params",
                     '{"epochs": 1, "batch_size": 2}', "--manifest", str(manifest), "--out", str(tmp_path / "out"),
                     "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "ichbench train: error: row 'HalfMap': score() returned a map of shape (2, 8, 8)" in err


# -- the code digest ------------------------------------------------------------------------------------------


def test_digest_covers_the_plugin_package_and_follows_its_edits(plugin_path, tmp_path):
    from ichbench.training import digest

    pkg = tmp_path / "src"
    shutil.copytree(EXAMPLE / "src", pkg)
    plugin_path.syspath_prepend(str(pkg))
    plugins.resolve("MyAE", SPEC)
    assert REGISTRY["MyAE"].__module__ == "my_row.rows"
    assert Path(sys.modules["my_row.rows"].__file__).is_relative_to(pkg)
    files = digest.source_files("MyAE")
    assert {"my_row.rows", "my_row.nets", "ichbench.methods.base", "ichbench.training.train"} <= set(files)
    assert "torch" not in " ".join(files)
    before, ae = digest.code_digest("MyAE"), digest.code_digest("AE")
    nets = pkg / "my_row" / "nets.py"
    nets.write_text(nets.read_text() + "\n# an edit\n")
    import linecache

    linecache.checkcache(str(nets))
    assert digest.code_digest("MyAE") != before and digest.code_digest("AE") == ae


# -- through Snakemake, beside AE -----------------------------------------------------------------------------


@pytest.mark.slow
def test_example_row_runs_through_the_pipeline_beside_ae(tmp_path, tmp_path_factory):
    """On a copy of the session's completed tiny run (AE and AE-L1): adding MyAE (and dropping AE-L1) trains
    and scores MyAE only; AE's jobs are not rerun."""
    from test_incremental import AGGREGATION, NARROW_AE, model_jobs, planned_jobs, project_config, tiny_project

    shared = tiny_project(tmp_path_factory)
    tree = shared.tree            # not edited here: the edits below go to the plugin's copy
    plugin = tmp_path / "my_row"
    shutil.copytree(EXAMPLE, plugin, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    work = tmp_path / "work"
    shutil.copytree(shared.work, work, symlinks=True)       # copy2: the run's mtimes are kept
    cfg = project_config({"AE": dict(NARROW_AE), "MyAE": {"class": SPEC, "width": 4}})
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    path = [str(tree / "src"), str(plugin / "src")]

    def snakemake(*args, extra_path=(), check=True):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + list(extra_path)), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(tree / "Snakefile"),
                               "--directory", str(work), "--cores", "2", "--resources", "gpu=2", *args],
                              capture_output=True, text=True, env=env, timeout=1200, cwd=work)
        if check and proc.returncode != 0:
            logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted((work / "logs").rglob("*.log")))
            raise AssertionError(f"{proc.stderr[-5000:]}\n{logs}")
        return proc

    proc = snakemake()
    ran = planned_jobs(proc.stdout + "\n" + proc.stderr)
    assert {(rule, w) for rule, w in ran if rule in ("train", "score")} == model_jobs(["MyAE"], [0, 1])
    table = pd.read_csv(work / "results" / "table1.csv")
    assert table["method"].tolist() == ["AE", "MyAE"]
    assert table["group"].tolist() == ["reconstruction", "reconstruction"]
    run = json.loads((work / "results" / "models" / "MyAE" / "fold-0" / "run.json").read_text())
    assert run["class"] == SPEC and run["params"]["width"] == 4 and "class" not in run["params"]
    assert "contract checked" in (work / "logs" / "train" / "MyAE" / "fold-0.log").read_text()
    assert "contract checked" not in (work / "logs" / "train" / "AE" / "fold-0.log").read_text()
    bundle = json.loads((work / "results" / "ichbench-results.json").read_text())
    assert "MyAE" in json.dumps(bundle)

    def dry(*args, extra_path=()):
        proc = snakemake("-n", *args, extra_path=extra_path)
        return planned_jobs(proc.stdout + "\n" + proc.stderr)

    assert dry() == set()
    # the same row through an installed distribution's entry point instead of `class:`: the same jobs
    dist = fake_dist(tmp_path / "site", "ichbench-my-row", {"MyAE": SPEC})
    (work / "config.yaml").write_text(yaml.safe_dump({**cfg, "methods": {"AE": dict(NARROW_AE),
                                                                         "MyAE": {"width": 4}}}))
    assert dry(extra_path=[str(dist)]) == set()
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    # editing the plugin's module reruns only its jobs and the aggregation
    nets = plugin / "src" / "my_row" / "nets.py"
    nets.write_text(nets.read_text() + "\n# an edit to the example row's network (test_plugin_rows)\n")
    assert dry() == model_jobs(["MyAE"], [0, 1]) | AGGREGATION
