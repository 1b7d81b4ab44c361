"""A DICOM preprocessing process without pandas (inputs/indexrows.py): the plain CSV reading of index.csv and
series_candidates.csv gives the rows pandas gives, the plain CSV writing the bytes pandas' to_csv writes, and
`ichbench preprocess` writes the same cache, series.csv and rejected.csv as the pandas path, without importing
pandas; tables of another shape go to pandas."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ichbench.cache import preprocess
from ichbench.cache.preprocess import build_index, cache_shard, read_index
from ichbench.inputs import indexrows
from ichbench.inputs.indexrows import IndexFormatError, IndexRows, read_chosen, read_series_rows, write_csv
from ichbench.inputs.windowing import PAPER_WINDOWS


@pytest.fixture(scope="module")
def awkward_cohort(tiny_synthetic, tmp_path_factory):
    """The tiny synthetic cohort, indexed, with a file whose name has a comma and quotes, and a file cut short
    after indexing (a rejection at load, named in rejected.csv)."""
    root = tmp_path_factory.mktemp("awkward")
    dicom = root / "dicom"
    shutil.copytree(tiny_synthetic / "dicom", dicom)
    files = sorted(p for p in dicom.rglob("*") if p.is_file())
    files[3].rename(files[3].with_name('odd, "name".dcm'))
    data = root / "index"
    data.mkdir()
    build_index(dicom, data / "index.csv", data / "series_candidates.csv", data / "rejected.csv")
    cut = sorted(p for p in dicom.rglob("*") if p.is_file())[11]
    cut.write_bytes(cut.read_bytes()[:2000])
    return data, root


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_the_plain_index_rows_are_read_indexs(awkward_cohort, shared_data, tmp_path):
    data, _ = awkward_cohort
    real = tmp_path / "real"
    real.mkdir()
    build_index(shared_data / "cq500" / "dicom", real / "index.csv", real / "c.csv", real / "r.csv", min_slices=1)
    for path in (data / "index.csv", real / "index.csv"):
        frame = read_index(path)
        groups = {u: g for u, g in frame.groupby("series_uid", sort=False)}
        plain = read_series_rows(path, list(groups))
        assert set(plain) == set(groups)
        for suid, g in groups.items():
            want = IndexRows.from_frame(g)
            for c in indexrows.PLAN_COLUMNS:
                got = plain[suid][c].tolist()
                assert len(got) == len(g) and all(_same(x, y) for x, y in zip(got, want[c].tolist())), (suid, c)
                assert all(type(x) is type(y) or (isinstance(x, int) and isinstance(y, int))
                           for x, y in zip(got, want[c].tolist())), (suid, c)
    assert read_series_rows(data / "index.csv", ["no such series"]) == {}


def test_plain_chosen_rows_are_the_selected_ones(awkward_cohort):
    data, _ = awkward_cohort
    got = read_chosen(data / "series_candidates.csv")
    want = pd.read_csv(data / "series_candidates.csv", dtype=str, keep_default_na=False)
    want = want[want["selected"] == "True"]
    assert [r["series_uid"] for r in got] == want["series_uid"].tolist()
    assert [r["scan_id"] for r in got] == want["scan_id"].tolist()


@pytest.mark.parametrize("seed", range(6))
def test_write_csv_is_pandas_to_csv(tmp_path, seed):
    rng = np.random.default_rng(seed)
    kinds = ["text", "int", "float", "bool", "mixed", "intnone", "floatnan", "none", "textnan"]
    columns = [f"{k}{j}" for j, k in enumerate(rng.permutation(kinds))]
    texts = ["", "plain", "a,b", 'say "x"', "line\nbreak", "ünïcode", " spaced ", "1.5", "True", "nan"]

    def value(kind):
        r = rng.random()
        return {"text": lambda: str(rng.choice(texts)),
                "int": lambda: int(rng.integers(-10**12, 10**12)),
                "float": lambda: float(rng.choice([0.1, 1 / 3, 1e-20, 2.5e17, -0.0, 5.0, rng.normal()])),
                "bool": lambda: bool(r < 0.5),
                "mixed": lambda: [1, 2.5, "x", True][int(r * 4)],
                "intnone": lambda: None if r < 0.3 else int(rng.integers(0, 100)),
                "floatnan": lambda: float("nan") if r < 0.3 else float(rng.normal()),
                "none": lambda: None,
                "textnan": lambda: float("nan") if r < 0.3 else str(rng.choice(texts))}[kind]()

    n = int(rng.integers(0, 12))
    rows = [{c: value(c.rstrip("0123456789")) for c in columns} for _ in range(n)]
    write_csv(tmp_path / "plain.csv", rows, columns)
    pd.DataFrame(rows, columns=columns).to_csv(tmp_path / "pandas.csv", index=False)
    assert (tmp_path / "plain.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


@pytest.mark.parametrize("change", ["no column", "not an int", "short row", "selected 1", "no scan id"])
def test_tables_of_another_shape_are_left_to_pandas(awkward_cohort, tmp_path, change):
    data, _ = awkward_cohort
    index, chosen = (data / "index.csv").read_text(), (data / "series_candidates.csv").read_text()
    if change == "no column":
        index = index.replace("instance_number", "instance", 1)
    elif change == "not an int":
        f = pd.read_csv(data / "index.csv", dtype=str, keep_default_na=False)
        f["rows"] = f["rows"] + ".0"
        index = f.to_csv(index=False)
    elif change == "short row":
        index += "x,y\n"
    else:
        c = pd.read_csv(data / "series_candidates.csv", dtype=str, keep_default_na=False)
        if change == "selected 1":
            c["selected"] = (c["selected"] == "True").astype(int).astype(str)
        else:
            c.loc[c.index[c["selected"] == "True"][0], "scan_id"] = ""
        chosen = c.to_csv(index=False)
    (tmp_path / "index.csv").write_text(index)
    (tmp_path / "series_candidates.csv").write_text(chosen)
    with pytest.raises(IndexFormatError):
        preprocess._plain_dicom_jobs(tmp_path / "index.csv", tmp_path / "series_candidates.csv", tmp_path, 0, 1,
                                     PAPER_WINDOWS, 64, None, "reject")


def _same_outputs(a, b) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name.endswith(".npz"):
            with np.load(a / name) as za, np.load(b / name) as zb:
                assert za.files == zb.files
                for k in za.files:
                    assert za[k].dtype == zb[k].dtype and za[k].tobytes() == zb[k].tobytes(), (name, k)
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_the_plain_shard_is_the_pandas_one(awkward_cohort, tmp_path, monkeypatch):
    data, root = awkward_cohort
    kw = dict(shard=0, n_shards=1, windows=PAPER_WINDOWS, size=64)
    rows = cache_shard(data / "index.csv", data / "series_candidates.csv", tmp_path / "plain", **kw)
    rejected = pd.read_csv(tmp_path / "plain" / "rejected.csv")
    assert rows and rejected["reason"].str.contains("cannot be decoded").any()     # a reason with commas: quoted

    def refuse(*args, **kwargs):
        raise IndexFormatError("the test's refusal")

    monkeypatch.setattr(preprocess, "_plain_dicom_jobs", refuse)
    table = preprocess.preprocess_shard(data / "index.csv", data / "series_candidates.csv", tmp_path / "pandas",
                                        **kw)
    _same_outputs(tmp_path / "plain", tmp_path / "pandas")
    assert table.to_dict("records") == pd.DataFrame(rows, columns=preprocess.SERIES_COLUMNS).to_dict("records")


def test_a_dicom_preprocess_process_does_not_import_pandas(awkward_cohort, tmp_path):
    data, _ = awkward_cohort
    code = ("import sys; from ichbench.cli import main; "
            f"rc = main(['preprocess', '--data', {str(data)!r}, '--out', {str(tmp_path / 'out')!r}, "
            "'--workers', '1', '--size', '64']); "
            "print('pandas' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "None"] or out == ["False", "0"], out
    assert (tmp_path / "out" / "series.csv").exists()
