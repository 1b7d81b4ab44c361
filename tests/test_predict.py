"""`ichbench export` and `ichbench predict`: a row trained here (AE, 1 epoch, 32 x 32) on a tiny synthetic run, exported
with its preprocessing, then run on new scans without Snakemake: the synthetic DICOM series, the real CQ500-CT-0 and
RSNA series of ../shared/data (skipped where absent) and NIfTI volumes written here. The map volume must lie in the
scan's own geometry (a voxel's world position against the DICOM header, the NIfTI's own shape and affine), the scores
must be the pipeline's own, and scans the pipeline rejects are rejected with its reasons."""
from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
import yaml

from ichbench.cache.preprocess import build_index, preprocess_shard
from ichbench.cli import main
from ichbench.inputs import dicomio, nifti
from ichbench.predict.export import FORMAT, read_export
from ichbench.predict.volume import dicom_grid, nifti_grid, to_volume
from ichbench.training.data import load_slices
from ichbench.training.train import load_trained, train

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
WINDOWS = [{"name": "brain", "level": 40, "width": 80}, {"name": "subdural", "level": 75, "width": 215},
           {"name": "bone", "level": 600, "width": 2800}]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_synthetic):
    """A results folder as the pipeline leaves it for AE fold 0: cache (at 32 x 32), manifest, model, scores."""
    work = tmp_path_factory.mktemp("run")
    data = work / "results" / "data"
    data.mkdir(parents=True)
    build_index(tiny_synthetic / "dicom", data / "index.csv", data / "series_candidates.csv",
                data / "rejected_index.csv")
    shard = data / "cache" / "shard-0"
    from ichbench.inputs.windowing import windows_from_config
    table = preprocess_shard(data / "index.csv", data / "series_candidates.csv", shard, shard=0, n_shards=1,
                             windows=windows_from_config(WINDOWS), size=SIZE)
    rows = []
    for _, s in table.iterrows():
        with np.load(shard / s["npz"]) as z:
            sops = list(z["sop_uids"])
        rows += [{"patient_id": s["patient_id"], "study_uid": s["study_uid"], "series_uid": s["series_uid"],
                  "sop_uid": u, "npz": f"results/data/cache/shard-0/{s['npz']}", "slice_index": k, "part": "train",
                  "label": 0, "fold": 0} for k, u in enumerate(sops)]
    manifest = pd.DataFrame(rows)
    (work / "results" / "splits").mkdir()
    absolute = work / "fold-0-absolute.csv"
    manifest.assign(npz=[str(work / p) for p in manifest["npz"]]).to_csv(absolute, index=False)
    manifest.to_csv(work / "results" / "splits" / "fold-0.csv", index=False)   # relative, as the pipeline writes
    train("AE", {"epochs": 1, "batch_size": 8, "width": 8, "hidden": 64}, absolute,
          work / "results" / "models" / "AE" / "fold-0", device="cpu", progress=False, checkpoint_every=0)
    (work / "results" / "scores" / "AE").mkdir(parents=True)
    pd.DataFrame({"part": ["val"] * 4 + ["test"], "scan_label": [0, 0, 0, 1, 0],
                  "score": [0.1, 0.2, 0.3, 9.0, 9.0]}).to_csv(work / "results" / "scores" / "AE" / "fold-0.csv",
                                                              index=False)
    overlay = work / "run.yaml"
    overlay.write_text(yaml.safe_dump({"preprocess": {"image_size": SIZE}}))
    return {"work": work, "results": work / "results", "overlay": overlay, "absolute": absolute,
            "dicom": tiny_synthetic / "dicom", "table": table}


def _export(run, out: Path, *extra: str) -> int:
    return main(["export", "--method", "AE", "--fold", "0", "--out", str(out), "--results", str(run["results"]),
                 "--config", str(ROOT / "config.yaml"), "--configfile", str(run["overlay"]), *extra])


@pytest.fixture(scope="module")
def exported(run):
    out = run["work"] / "ae.pt"
    assert _export(run, out) == 0
    return out


def _predict(model: Path, out: Path, *source: str) -> int:
    return main(["predict", "--model", str(model), *source, "--out", str(out), "--device", "cpu"])


def _scan_dirs(dicom: Path) -> list[Path]:
    return sorted({Path(p).parent for p in dicom.rglob("*.dcm")})


def _headers(folder: Path) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in sorted(folder.rglob("*"))
                                                 if p.is_file() and p.suffix in ("", ".dcm"))}


def _check_dicom_geometry(out: Path, folder: Path, n_expected: int) -> pd.DataFrame:
    """The CSV has a row per kept slice; voxels of the map lie where the DICOM header puts those pixels."""
    scores = pd.read_csv(out / "slice_scores.csv")
    assert len(scores) == n_expected
    assert scores["score"].notna().all() and np.isfinite(scores["score"]).all()
    img = nib.load(str(out / "anomaly_map.nii.gz"))
    headers = list(_headers(folder).values())
    ds0 = headers[0]
    assert img.shape[:2] == (int(ds0.Columns), int(ds0.Rows))
    assert img.shape[2] == scores["volume_k"].max() + 1 and scores["volume_k"].is_unique
    by_z = {round(float(d.ImagePositionPatient[2]), 3): d for d in headers}
    x, y = np.array(ds0.ImageOrientationPatient[:3], float), np.array(ds0.ImageOrientationPatient[3:], float)
    rs, cs = (float(v) for v in ds0.PixelSpacing)
    off = json.loads((out / "prediction.json").read_text())["geometry"]["max_slice_offset_mm"]
    assert off < 0.1
    for _, r in scores.iloc[[0, len(scores) // 2, -1]].iterrows():
        d = by_z[round(float(r["z_mm"]), 3)]
        ipp = np.array(d.ImagePositionPatient, float)
        for i, j in ((0, 0), (7, 100), (int(ds0.Columns) - 1, int(ds0.Rows) - 3)):
            lps = ipp + i * cs * x + j * rs * y
            world = img.affine @ [i, j, r["volume_k"], 1]
            np.testing.assert_allclose(world[:3], [-lps[0], -lps[1], lps[2]], atol=off + 1e-3)
    return scores


def _no_ids_in(out: Path, *ids: str) -> None:
    """No output holds one of the IDs: the text files none, the binary ones (map, montage) none of 10 characters
    or more (a short string turns up by chance in compressed pixels)."""
    for f in out.iterdir():
        binary = f.suffix in (".gz", ".png")
        text = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        for i in ids:
            if not binary or len(i) >= 10:
                assert i.encode() not in text, f"{f.name} holds {i!r}"


def test_export_holds_weights_params_and_preprocessing(exported, run):
    blob = read_export(exported)
    assert blob["format"] == FORMAT and blob["row"] == "AE" and blob["fold"] == 0
    pre = blob["preprocessing"]
    assert pre["windows"] == WINDOWS and pre["image_size"] == SIZE and pre["channels"] == 3
    assert pre["min_slices"] == 8 and pre["min_extent_mm"] == 60.0 and pre["non_hu"] == "reject"
    assert pre["rules"]["hu_check"]["air_max_hu"] == -200.0 and pre["rules"]["masks"]["bone_hu"] == 300.0
    assert blob["record"]["params"]["width"] == 8 and blob["record"]["code_digest"]
    assert "ichbench" in blob["software"] and "git_commit" in blob["software"]
    assert blob["reference"]["n"] == 3 and blob["scan_aggregation"] == {"how": "max", "top_k": 3}
    model = torch.load(run["results"] / "models" / "AE" / "fold-0" / "model.pt", weights_only=True)
    for k, v in model["state"]["model"].items():
        assert torch.equal(blob["state"]["model"][k], v)
    assert "optimizers" not in blob["state"]


def test_export_refuses_a_missing_model(run, tmp_path, capsys):
    assert main(["export", "--method", "AE", "--fold", "3", "--out", str(tmp_path / "x.pt"), "--results",
                 str(run["results"]), "--config", str(ROOT / "config.yaml")]) == 1
    err = capsys.readouterr().err
    assert "no trained model of AE on fold 3" in err and "AE fold 0" in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()


def test_predict_on_the_synthetic_series_scores_as_the_pipeline(exported, run, tmp_path):
    folder = _scan_dirs(run["dicom"])[0]
    out = tmp_path / "out"
    assert _predict(exported, out, "--dicom-dir", str(folder)) == 0
    sop0 = str(pydicom.dcmread(next(folder.rglob("*.dcm"))).SOPInstanceUID)
    rows = pd.read_csv(run["absolute"], dtype=str)
    series = rows[rows["sop_uid"] == sop0]["series_uid"].iloc[0]
    mine = rows[rows["series_uid"] == series].astype({"slice_index": int}).sort_values("slice_index")
    scores = _check_dicom_geometry(out, folder, len(mine))
    method, _ = load_trained(run["results"] / "models" / "AE" / "fold-0" / "model.pt", "cpu")
    x = torch.from_numpy(load_slices(mine).images).float().div(127.5).sub(1)
    want, _ = method.score({"x": x})
    np.testing.assert_allclose(scores["score"], want.numpy(), rtol=1e-5)
    np.testing.assert_allclose(scores["normal_percentile"], 100.0, atol=1e-9)       # all far above 0.1 .. 0.3
    summary = json.loads((out / "prediction.json").read_text())
    assert summary["slices"] == len(mine) and summary["scan_score"]["value"] == pytest.approx(scores["score"].max())
    assert (out / "montage.png").stat().st_size > 1000
    ds = pydicom.dcmread(next(folder.rglob("*.dcm")))
    _no_ids_in(out, str(ds.PatientID), str(ds.PatientName), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
               sop0, str(folder))


def test_the_map_volume_holds_the_slices_where_the_header_puts_them(run):
    """The grid of a DICOM series puts slice maps voxel for voxel where their pixels lie: a HU volume through it
    gives back each file's pixel (column i, row j) at voxel (i, j, k)."""
    folder = _scan_dirs(run["dicom"])[1]
    from ichbench.inputs.dicom_index import index_folder

    index, _ = index_folder(folder)
    series = dicomio.load_series(index)
    files = index.set_index("sop_uid").loc[series.sop_uids]
    grid = dicom_grid(np.array([list(p) for p in files["position"]]), files["orientation"].iloc[0],
                      files["pixel_spacing"].iloc[0], *series.hu.shape[1:])
    vol = to_volume(grid, series.hu)
    for k, sop in enumerate(series.sop_uids[:3]):
        ds = pydicom.dcmread(files.loc[sop, "path"])
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(vol[:, :, grid.slice_k[k]], hu.T, atol=1e-3)


def test_gaps_become_empty_slices_of_a_regular_grid():
    ipp = np.array([[0, 0, 0], [0, 0, 2.0], [0, 0, 6.0], [0, 0, 8.0]])
    g = dicom_grid(ipp, [1, 0, 0, 0, 1, 0], [0.5, 0.5], 4, 6)
    assert g.shape == (6, 4, 5) and list(g.slice_k) == [0, 1, 3, 4] and "1 slice position" in g.notes[0]
    g = dicom_grid(np.array([[0, 0, 0], [0, 0, 2.0], [0, 0, 5.1]]), [1, 0, 0, 0, 1, 0], [0.5, 0.5], 4, 6)
    assert list(g.slice_k) == [0, 1, 2] and "uneven slice spacing" in g.notes[0] and g.max_offset_mm > 0.3


def test_predict_on_cq500_ct0(exported, shared_data, tmp_path):
    folder = shared_data / "cq500" / "dicom" / "CQ500-CT-0"
    out = tmp_path / "cq500"
    assert _predict(exported, out, "--dicom-dir", str(folder)) == 0
    scores = _check_dicom_geometry(out, folder, 238)
    assert nib.load(str(out / "anomaly_map.nii.gz")).shape == (512, 512, 239)        # one slice missing: a gap
    assert scores["z_mm"].is_monotonic_increasing
    summary = json.loads((out / "prediction.json").read_text())
    assert any("gaps in the series" in n for n in summary["notes"])
    _no_ids_in(out, "CQ500-CT-0", str(folder))


def test_predict_on_the_rsna_series(exported, shared_data, tmp_path):
    folder = shared_data / "rsna"
    out = tmp_path / "rsna"
    assert _predict(exported, out, "--dicom-dir", str(folder)) == 0
    _check_dicom_geometry(out, folder, 32)
    _no_ids_in(out, "ID_52c1ab5a", "ID_1f6d1e8aeb", "ID_4d28912ba6")


def _hu_volume(run) -> tuple[np.ndarray, int]:
    folder = _scan_dirs(run["dicom"])[2]
    from ichbench.inputs.dicom_index import index_folder

    index, _ = index_folder(folder)
    hu = dicomio.load_series(index).hu
    return hu.transpose(2, 1, 0).astype(np.float32), hu.shape[0]      # (x = columns, y = rows, z)


#: an oblique, non-canonical affine (axes L, P, S permuted and rotated): the map must come back on this grid
OBLIQUE = np.array([[0.0, -0.7, 0.05, 90.0], [0.68, 0.0, 0.0, -80.0], [0.0, 0.1, 5.0, -30.0], [0, 0, 0, 1]])


def test_predict_on_a_nifti_volume(exported, run, tmp_path):
    vol, n = _hu_volume(run)
    vol = np.ascontiguousarray(vol.transpose(1, 0, 2))                     # first array axis along -y/+x
    path = tmp_path / "Doe^Jane_1970.nii.gz"                               # a name that must not reach the outputs
    nib.save(nib.Nifti1Image(vol, OBLIQUE), str(path))
    out = tmp_path / "nifti-out"
    assert _predict(exported, out, "--nifti", str(path)) == 0
    img = nib.load(str(out / "anomaly_map.nii.gz"))
    assert img.shape == vol.shape
    np.testing.assert_allclose(img.affine, OBLIQUE, atol=1e-5)
    scores = pd.read_csv(out / "slice_scores.csv")
    assert len(scores) == n and sorted(scores["volume_k"]) == list(range(n))
    axis = json.loads((out / "prediction.json").read_text())["geometry"]["slice_axis"]
    assert axis == 2
    for _, r in scores.iloc[[0, -1]].iterrows():       # z_mm: the world z of the slice's first pixel, a corner
        corners = [(OBLIQUE @ [a, b, r["volume_k"], 1])[2]
                   for a in (0, vol.shape[0] - 1) for b in (0, vol.shape[1] - 1)]
        assert min(abs(c - r["z_mm"]) for c in corners) < 1e-3
    _no_ids_in(out, "Doe^Jane_1970", str(path))
    assert (out / "montage.png").is_file()


def test_the_nifti_map_goes_back_onto_the_input_grid_voxel_for_voxel(run, tmp_path):
    vol, _ = _hu_volume(run)
    vol = np.ascontiguousarray(vol.transpose(1, 0, 2)[:, ::-1])
    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(vol, OBLIQUE), str(path))
    series, _ = nifti.load_volume({"path": str(path), "patient_id": "v", "series_uid": "v"})
    np.testing.assert_array_equal(to_volume(nifti_grid(path), series.hu), np.maximum(vol, -1024))


def _reason_of(rejected_csv: Path) -> list[str]:
    return list(pd.read_csv(rejected_csv, dtype=str, keep_default_na=False)["reason"])


def test_a_scan_with_three_slices_is_rejected_with_the_pipelines_reason(exported, run, tmp_path, capsys):
    folder = tmp_path / "three"
    folder.mkdir()
    for p in sorted(_scan_dirs(run["dicom"])[0].rglob("*.dcm"))[:3]:
        shutil.copy(p, folder / p.name)
    with pytest.raises(RuntimeError):
        build_index(folder, tmp_path / "i.csv", tmp_path / "c.csv", tmp_path / "r.csv")
    reason = [r for r in _reason_of(tmp_path / "r.csv") if r.startswith("no usable series")][0]
    assert "fewer than 8 slices" in reason
    assert _predict(exported, tmp_path / "o", "--dicom-dir", str(folder)) == 1
    err = capsys.readouterr().err
    assert reason in err and "rejected, as the pipeline would reject it" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "slice_scores.csv").exists()


def test_a_series_not_in_hu_is_rejected_with_the_pipelines_reason(exported, run, tmp_path, capsys):
    folder = tmp_path / "display"
    folder.mkdir()
    for p in sorted(_scan_dirs(run["dicom"])[0].rglob("*.dcm")):
        ds = pydicom.dcmread(p)
        ds.RescaleSlope, ds.RescaleIntercept = 0.01, -200      # no air, no bone (intercept below -100: not the RSNA fix)
        ds.save_as(folder / p.name)
    data = tmp_path / "pipeline"
    data.mkdir()
    build_index(folder, data / "index.csv", data / "series_candidates.csv", data / "rejected_index.csv")
    from ichbench.inputs.windowing import windows_from_config
    assert preprocess_shard(data / "index.csv", data / "series_candidates.csv", data / "cache", shard=0, n_shards=1,
                            windows=windows_from_config(WINDOWS), size=SIZE).empty
    reason = [r for r in _reason_of(data / "cache" / "rejected.csv") if "do not look like CT in HU" in r][0]
    assert _predict(exported, tmp_path / "o", "--dicom-dir", str(folder)) == 1
    err = capsys.readouterr().err
    assert reason in err and "Traceback" not in err


def test_a_nifti_not_in_hu_or_too_short_is_rejected(exported, run, tmp_path, capsys):
    vol, _ = _hu_volume(run)
    nib.save(nib.Nifti1Image((vol + 1024) / 4096, np.eye(4)), str(tmp_path / "unit.nii.gz"))
    assert _predict(exported, tmp_path / "o1", "--nifti", str(tmp_path / "unit.nii.gz")) == 1
    err = capsys.readouterr().err
    assert "do not look like CT in HU (no air, no bone); convert the volume to HU first" in err
    assert str(tmp_path / "unit.nii.gz") in err and "nifti/scan" not in err
    nib.save(nib.Nifti1Image(vol[:, :, :3], np.eye(4)), str(tmp_path / "short.nii.gz"))
    assert _predict(exported, tmp_path / "o2", "--nifti", str(tmp_path / "short.nii.gz")) == 1
    assert "volume has 3 axial slices, fewer than 8" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["garbage", "model.pt", "missing"])
def test_predict_with_a_file_that_is_no_exported_model(kind, run, tmp_path, capsys):
    model = tmp_path / "m.pt"
    if kind == "garbage":
        model.write_bytes(b"not a model at all" * 10)
    elif kind == "model.pt":
        shutil.copy(run["results"] / "models" / "AE" / "fold-0" / "model.pt", model)
    folder = _scan_dirs(run["dicom"])[0]
    assert _predict(model, tmp_path / "o", "--dicom-dir", str(folder)) == 1
    err = capsys.readouterr().err
    assert str(model) in err and "Traceback" not in err
    assert {"garbage": "not a readable exported model file", "model.pt": "a pipeline model.pt, not an exported model",
            "missing": "no such exported model file"}[kind] in err


def _tampered(exported: Path, out: Path, change) -> Path:
    blob = torch.load(exported, weights_only=True)
    change(blob)
    torch.save(blob, out)
    return out


def test_an_exported_model_that_does_not_fit_this_code_is_refused_or_noted(exported, run, tmp_path, capsys):
    folder = str(_scan_dirs(run["dicom"])[0])

    def unknown(b):
        b["record"]["method"] = "NoSuchRow"

    def reshaped(b):
        key = next(iter(b["state"]["model"]))
        b["state"]["model"][key] = torch.zeros(3, 1)

    def digest(b):
        b["record"]["code_digest"] = "0000000000000000"

    assert _predict(_tampered(exported, tmp_path / "u.pt", unknown), tmp_path / "o", "--dicom-dir", folder) == 1
    err = capsys.readouterr().err
    assert "row 'NoSuchRow' is not registered" in err and "Traceback" not in err
    assert _predict(_tampered(exported, tmp_path / "r.pt", reshaped), tmp_path / "o", "--dicom-dir", folder) == 1
    err = capsys.readouterr().err
    assert "its weights do not fit this ichbench's AE network" in err and "Traceback" not in err
    assert _predict(_tampered(exported, tmp_path / "d.pt", digest), tmp_path / "o", "--dicom-dir", folder) == 0
    notes = json.loads((tmp_path / "o" / "prediction.json").read_text())["notes"]
    assert any("the code of AE changed since training" in n for n in notes)


def test_a_folder_without_ct_is_rejected_with_the_pipelines_reason(exported, tmp_path, capsys):
    (tmp_path / "scan").mkdir()
    (tmp_path / "scan" / "notes.txt").write_text("not an image")
    assert _predict(exported, tmp_path / "o", "--dicom-dir", str(tmp_path / "scan")) == 1
    err = capsys.readouterr().err
    assert "rejected, as the pipeline would reject it: not a DICOM file" in err and "Traceback" not in err


def test_a_self_supervised_row_with_fitted_state_predicts_as_the_pipeline_scores(run, tmp_path):
    """CutPaste-2stage: no pixel map of its own (slice score from a Gaussian fitted after training, the row's extra
    state), so the export must carry that state and predict must score with it."""
    row = "CutPaste-2stage"
    model_dir = run["results"] / "models" / row / "fold-0"
    train(row, {"epochs": 1, "batch_size": 8, "steps_per_epoch": 2}, run["absolute"], model_dir, device="cpu",
          progress=False, checkpoint_every=0)
    folder = _scan_dirs(run["dicom"])[1]
    sop0 = str(pydicom.dcmread(next(folder.rglob("*.dcm"))).SOPInstanceUID)
    rows = pd.read_csv(run["absolute"], dtype=str)
    series = rows[rows["sop_uid"] == sop0]["series_uid"].iloc[0]
    mine = load_slices(rows[rows["series_uid"] == series].astype({"slice_index": int}).sort_values("slice_index"))
    try:
        method, _ = load_trained(model_dir / "model.pt", "cpu")           # as the pipeline's score job
        want, _ = method.score({"x": torch.from_numpy(mine.images).float().div(127.5).sub(1),
                                **{k: torch.from_numpy(v) for k, v in mine.masks.items()}})
        assert main(["export", "--method", row, "--fold", "0", "--out", str(tmp_path / "cp.pt"), "--results",
                     str(run["results"]), "--config", str(ROOT / "config.yaml"), "--configfile",
                     str(run["overlay"])]) == 0
    finally:
        shutil.rmtree(model_dir.parent)
    assert read_export(tmp_path / "cp.pt")["state"]["extra"]
    assert _predict(tmp_path / "cp.pt", tmp_path / "o", "--dicom-dir", str(folder)) == 0
    got = pd.read_csv(tmp_path / "o" / "slice_scores.csv")
    np.testing.assert_allclose(got["score"], want.numpy(), rtol=1e-5)
    assert nib.load(str(tmp_path / "o" / "anomaly_map.nii.gz")).shape[:2] == (256, 256)


def test_predict_chooses_the_series_the_pipeline_chooses(exported, tmp_path):
    """A scan with a soft-tissue series, a bone-kernel series and a localizer: the soft-tissue one is scored."""
    from ichbench.synthetic import SyntheticConfig, generate

    generate(tmp_path / "syn", SyntheticConfig(seed=11, n_normal=1, n_pathological=0, image_size=128,
                                               n_slices=(9, 9), extra_series=True))
    data = tmp_path / "pipeline"
    data.mkdir()
    cand = build_index(tmp_path / "syn" / "dicom", data / "i.csv", data / "c.csv", data / "r.csv")
    assert len(cand) >= 2 and cand["selected"].sum() == 1
    chosen = cand[cand["selected"]].iloc[0]
    assert _predict(exported, tmp_path / "o", "--dicom-dir", str(tmp_path / "syn" / "dicom")) == 0
    scores = pd.read_csv(tmp_path / "o" / "slice_scores.csv")
    assert len(scores) == chosen["n_files"]
    from ichbench.inputs.windowing import windows_from_config
    from ichbench.predict.run import load_exported

    method, _ = load_exported(read_export(exported), torch.device("cpu"))
    got = {}
    this = cand["series_uid"] == chosen["series_uid"]
    other = ~this & (cand["n_files"] > 0)          # the bone-kernel series (the localizer has no usable file)
    for which, pick in ((True, this), (False, other)):        # each cached as the pipeline caches a chosen series
        cand.assign(selected=pick).to_csv(data / "c2.csv", index=False)
        t = preprocess_shard(data / "i.csv", data / "c2.csv", data / f"cache-{which}", shard=0, n_shards=1,
                             windows=windows_from_config(WINDOWS), size=SIZE)
        x = load_slices(pd.DataFrame({"npz": str(data / f"cache-{which}" / t["npz"].iloc[0]),
                                      "slice_index": range(int(t["n_slices"].iloc[0]))}))
        got[which] = method.score({"x": torch.from_numpy(x.images).float().div(127.5).sub(1)})[0].numpy()
    np.testing.assert_allclose(scores["score"], got[True], rtol=1e-5)
    assert np.abs(scores["score"].to_numpy() - got[False]).max() > 1e-4      # the other series scores otherwise


def test_a_plugin_row_is_exported_with_its_class_and_predicts_from_it(exported, run, tmp_path, monkeypatch, capsys):
    """The export of a row from outside the package names its class; predict imports it where the registry lacks
    the row, and without the class's package on the path says so, naming the class."""
    from ichbench.methods import REGISTRY, plugins
    from ichbench.training.train import build_method

    spec = "my_row.rows:MyAE"
    saved = dict(REGISTRY), dict(plugins.SPECS), dict(plugins.SOURCES)
    folder = str(_scan_dirs(run["dicom"])[0])
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "my_row" / "src"))
    try:
        plugins.resolve("MyAE", spec)
        method = build_method("MyAE", {"width": 8, "code": 16, "l1_weight": 0.5}, 3, 128, torch.device("cpu"))

        def as_plugin(b):
            b["record"].update(method="MyAE", params=dict(method.params), **{"class": spec})
            b["state"] = {**method.state_dict(), "optimizers": [], "schedulers": []}
            b["row"] = "MyAE"

        model = _tampered(exported, tmp_path / "my.pt", as_plugin)
        for d, s in zip((REGISTRY, plugins.SPECS, plugins.SOURCES), saved):
            d.clear()
            d.update(s)
        assert "MyAE" not in REGISTRY
        assert _predict(model, tmp_path / "o", "--dicom-dir", folder) == 0
        assert "MyAE" in REGISTRY and plugins.spec_of("MyAE") == spec
        scores = pd.read_csv(tmp_path / "o" / "slice_scores.csv")
        assert len(scores) > 0 and np.isfinite(scores["score"]).all()
        assert json.loads((tmp_path / "o" / "prediction.json").read_text())["row"] == "MyAE"
        # the class's package is not on the path: a message naming the class, no traceback
        for d, s in zip((REGISTRY, plugins.SPECS, plugins.SOURCES), saved):
            d.clear()
            d.update(s)
        for mod in [m for m in sys.modules if m == "my_row" or m.startswith("my_row.")]:
            del sys.modules[mod]
        monkeypatch.setattr(sys, "path", [p for p in sys.path if "my_row" not in p])
        capsys.readouterr()
        assert _predict(model, tmp_path / "o2", "--dicom-dir", folder) == 1
        err = capsys.readouterr().err
        assert "class my_row.rows:MyAE" in err and "could not be loaded" in err and "Traceback" not in err
    finally:
        for d, s in zip((REGISTRY, plugins.SPECS, plugins.SOURCES), saved):
            d.clear()
            d.update(s)
        for mod in [m for m in sys.modules if m == "my_row" or m.startswith("my_row.")]:
            del sys.modules[mod]
