import subprocess
import sys

import pytest
import yaml

from ichbench import config
from ichbench.cli import main


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    rc = main(["index", "--dicom-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "error:" in err and "nope" in err and "Traceback" not in err


def test_folder_without_ct_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x")
    rc = main(["index", "--dicom-dir", str(tmp_path / "in"), "--out", str(tmp_path / "o")])
    assert rc == 1
    assert "no usable CT image" in capsys.readouterr().err
    assert "not a DICOM file" in (tmp_path / "o" / "rejected_index.csv").read_text()


def test_config_defaults_and_method_params():
    cfg = config.load(config.ROOT / "config.yaml")
    assert cfg["preprocess"]["windows"][0] == {"name": "brain", "level": 40, "width": 80}
    p = config.method_params(cfg, "AE")
    assert p["latent_dim"] == 16 and p["epochs"] == cfg["recipes"][cfg["recipe"]]["all"]["epochs"]
    paper = dict(cfg, recipe="paper")
    assert config.method_params(paper, "AE")["epochs"] == 250


def test_config_errors_are_named(tmp_path):
    cfg = yaml.safe_load((config.ROOT / "config.yaml").read_text())
    cfg["methods"] = {"NoSuchMethod": {}}
    with pytest.raises(config.ConfigError, match="unknown method"):
        config.validate(cfg)
    cfg = yaml.safe_load((config.ROOT / "config.yaml").read_text())
    cfg["methods"]["AE"]["latent_dimension"] = 3
    with pytest.raises(config.ConfigError, match="no hyper-parameter 'latent_dimension'"):
        config.method_params(config.validate(cfg), "AE")
    cfg = yaml.safe_load((config.ROOT / "config.yaml").read_text())
    cfg["splits"]["n_folds"] = "five"
    with pytest.raises(config.ConfigError, match="splits/n_folds"):
        config.validate(cfg)


def test_module_entry_point_lists_methods():
    out = subprocess.run([sys.executable, "-m", "ichbench", "methods"], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] and "AE" in out.stdout.split()
