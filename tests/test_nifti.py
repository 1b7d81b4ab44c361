"""NIfTI input: a tiny generated volume set through index / preprocess / split (CLI and Snakemake)."""
import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from ichbench.inputs import nifti
from ichbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (48, 56, 12)                  # x (left -> right), y (posterior -> anterior), z (inferior -> superior)
LESION_SLICES = (5, 6, 7)


def phantom(seed: int, lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    """A head-like volume in RAS voxel order: HU and the hemorrhage mask."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(SHAPE[0]) - 23.5, np.arange(SHAPE[1]) - 27.5, indexing="ij")
    r = np.sqrt((x / 20) ** 2 + (y / 24) ** 2)
    vol = np.full(SHAPE, -1000.0, np.float32)
    mask = np.zeros(SHAPE, bool)
    for k in range(SHAPE[2]):
        sl = np.where(r < 1.0, 1000.0, -1000.0)
        sl[r < 0.85] = 35.0
        vol[:, :, k] = sl + rng.normal(0, 4, sl.shape)
        if lesion and k in LESION_SLICES:
            blob = ((x - 6) ** 2 + (y - 4) ** 2) < 25
            vol[:, :, k][blob] = 75.0
            mask[:, :, k] = blob
    vol[40:44, 46:50, -1] = 2500.0    # a marker: patient right, anterior, most superior slice
    return vol, mask


def save(arr, path: Path, flip: bool = False, dtype=np.int16):
    """Save in RAS order, or flipped to LPS voxel order (x and y reversed) with the matching affine."""
    aff = np.diag([0.9, 0.9, 5.0, 1.0])
    aff[:3, 3] = [-20, -25, -30]
    if flip:
        arr = arr[::-1, ::-1, :]
        aff = aff @ np.array([[-1, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(np.asarray(arr).astype(dtype), aff), str(path))


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("nifti")
    ct, masks = root / "ct", root / "masks"
    ct.mkdir()
    masks.mkdir()
    rows = []
    for i in range(12):
        lesion = i >= 6
        vol, mask = phantom(i, lesion)
        sid = f"scan_{i:02d}"
        save(vol, ct / f"{sid}.nii.gz", flip=(i % 3 == 0))
        save(mask, masks / (f"{sid}_seg.nii.gz" if i % 2 else f"{sid}.nii.gz"), flip=(i % 3 == 0), dtype=np.uint8)
        rows.append((sid, int(lesion)))
    pd.DataFrame(rows, columns=["scan_id", "label"]).to_csv(root / "labels.csv", index=False)
    return root


def run_cli(root: Path, out: Path, label_args: list[str], protocol: str = "slice") -> list[int]:
    data = out / "data"
    return [
        main(["index", "--nifti-dir", str(root / "ct"), "--nifti-masks-dir", str(root / "masks"), "--out", str(data)]),
        main(["preprocess", "--data", str(data), "--out", str(data / "cache" / "shard-0"), "--size", "64"]),
        main(["split", "--shards", str(data / "cache" / "shard-0"), *label_args, "--protocol", protocol,
              "--n-folds", "3", "--out", str(out / "splits"), "--cohort", str(data / "cohort.csv"),
              "--rejected-in", str(data / "rejected_index.csv"), str(data / "cache" / "shard-0" / "rejected.csv"),
              "--rejected-out", str(data / "rejected.csv")]),
    ]


def test_nifti_through_index_preprocess_split(volumes, tmp_path):
    out = tmp_path / "r"
    assert run_cli(volumes, out, ["--label-source", "csv", "--labels", str(volumes / "labels.csv")]) == [0, 0, 0]
    sel = pd.read_csv(out / "data" / "series_selected.csv", dtype=str)
    assert len(sel) == 12 and (sel["series_uid"] == sel["patient_id"]).all()
    table = pd.read_csv(out / "data" / "cache" / "shard-0" / "series.csv")
    assert len(table) == 12 and table["has_gt"].all() and (table["source"] == "nifti").all()
    assert (table["n_slices"] == SHAPE[2]).all()
    cohort = pd.read_csv(out / "data" / "cohort.csv").set_index("scan_class")
    assert cohort.loc["normal", "patients"] == 6 and cohort.loc["pathological", "patients"] == 6
    assert cohort.loc["all", "slices"] == 12 * SHAPE[2]
    assert cohort.loc["pathological", "slices_anomalous"] == 6 * len(LESION_SLICES)
    m = pd.read_csv(out / "splits" / "fold-0.csv", dtype=str)
    assert m["sop_uid"].str.fullmatch(r"scan_\d\d#\d+").all()
    assert set(m["protocol"]) == {"slice"}
    path = m[m["part"] == "test"].query("scan_label == '1'")
    assert set(path.loc[path["label"] == "1", "slice_index"].astype(int)) == set(LESION_SLICES)
    with np.load(out / "data" / "cache" / "shard-0" / "scan_07.npz") as z:
        assert list(z["sop_uids"]) == [f"scan_07#{k}" for k in range(SHAPE[2])]
        assert np.all(np.diff(z["positions"]) > 0)
        assert z["gt_mask"].any(axis=(1, 2)).nonzero()[0].tolist() == list(LESION_SLICES)
        assert str(z["gt_source"]) == "masks"


def test_nifti_labels_from_masks(volumes, tmp_path):
    out = tmp_path / "r"
    assert run_cli(volumes, out, ["--label-source", "masks"], protocol="paper") == [0, 0, 0]
    cohort = pd.read_csv(out / "data" / "cohort.csv").set_index("scan_class")
    assert cohort.loc["normal", "patients"] == 6 and cohort.loc["pathological", "patients"] == 6
    assert cohort.loc["pathological", "slices_anomalous"] == 6 * SHAPE[2]      # paper: every slice


def test_orientation_is_canonical_and_displayed_like_dicom(volumes):
    vol, _ = phantom(0, False)
    ras, lps = volumes / "ras.nii.gz", volumes / "lps.nii.gz"
    save(vol, ras)
    save(vol, lps, flip=True)
    a, _ = nifti.load_volume({"path": str(ras), "patient_id": "a", "series_uid": "a", "mask_path": ""})
    b, _ = nifti.load_volume({"path": str(lps), "patient_id": "b", "series_uid": "b", "mask_path": ""})
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.hu.shape == (SHAPE[2], SHAPE[1], SHAPE[0])                  # (slices, rows, columns)
    assert a.pixel_spacing == pytest.approx((0.9, 0.9)) and a.slice_thickness == pytest.approx(5.0)
    assert np.allclose(np.diff(a.positions), 5.0)
    # the marker (patient right, anterior, superior): last slice, top rows, left columns
    k, r, c = np.unravel_index(np.argmax(a.hu), a.hu.shape)
    assert k == SHAPE[2] - 1 and r < SHAPE[1] // 4 and c < SHAPE[0] // 4
    os.remove(ras)
    os.remove(lps)


def test_bad_nifti_files_are_rejected(volumes, tmp_path):
    root = tmp_path / "bad"
    (root / "ct").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in (0, 1, 2, 6, 7, 8):
        for sub in ("ct", "masks"):
            src = next((volumes / sub).glob(f"scan_{i:02d}*"))
            (root / sub / src.name).write_bytes(src.read_bytes())
    good = (volumes / "ct" / "scan_03.nii.gz").read_bytes()
    (root / "ct" / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 10, 2), np.int16), np.eye(4)), str(root / "ct" / "fourd.nii.gz"))
    vol, _ = phantom(3, False)
    save((vol + 1000) / 4000, root / "ct" / "normalised.nii.gz", dtype=np.float32)
    save(vol, root / "ct" / "badmask.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 12), np.uint8), np.eye(4)), str(root / "masks" / "badmask.nii.gz"))
    (root / "ct" / "notes.nii").write_text("not nifti")
    (root / "masks" / "orphan.nii.gz").write_bytes(gzip.compress(b"x"))
    labels = root / "labels.csv"
    labels.write_text("scan_id,label\n" + "".join(f"scan_{i:02d},{int(i >= 6)}\n" for i in (0, 1, 2, 6, 7, 8)) +
                      "badmask,0\nnormalised,0\ntruncated,0\nghost,1\n")
    out = tmp_path / "r"
    assert run_cli(root, out, ["--label-source", "csv", "--labels", str(labels)]) == [0, 0, 0]
    rej = pd.read_csv(out / "data" / "rejected.csv", dtype=str, keep_default_na=False)
    reason = {Path(i).name: r for i, r in zip(rej["item"], rej["reason"])}
    assert "expected a 3D volume" in reason["fourd.nii.gz"]
    assert "unreadable NIfTI" in reason["notes.nii"]
    assert "mask shape" in reason["badmask.nii.gz"] and "kept without ground truth" in reason["badmask.nii.gz"]
    assert "do not look like CT in HU" in reason["normalised.nii.gz"]
    assert "unreadable NIfTI" in reason["truncated.nii.gz"]
    assert "mask without a volume" in reason["orphan.nii.gz"]
    assert "missing download" in reason["ghost"]             # labelled, but no file of it at all
    table = pd.read_csv(out / "data" / "cache" / "shard-0" / "series.csv")
    assert set(table["patient_id"]) == {"scan_00", "scan_01", "scan_02", "scan_06", "scan_07", "scan_08", "badmask"}
    assert not table.set_index("patient_id").loc["badmask", "has_gt"]
    assert not list((out / "data" / "cache" / "shard-0").glob("*partial*"))


def test_snakemake_runs_nifti_source_to_the_folds(volumes, tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["dataset"].update({"source": "nifti", "nifti_dir": str(volumes / "ct"), "nifti_masks_dir": str(volumes / "masks"),
                           "nifti_labels": str(volumes / "labels.csv")})
    cfg["splits"]["n_folds"] = 3
    cfg["preprocess"]["image_size"] = 64
    cfg["protocol"] = "slice"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--cores", "2", "results/splits/fold-0.csv", "results/data/cohort.csv"],
                          capture_output=True, text=True, env=env)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "logs").rglob("*.log")))
    assert proc.returncode == 0, proc.stderr[-4000:] + logs
    cohort = pd.read_csv(tmp_path / "results" / "data" / "cohort.csv").set_index("scan_class")
    assert cohort.loc["all", "patients"] == 12 and cohort.loc["all", "label_source"] == "csv"
    assert (tmp_path / "results" / "data" / "boxes.csv").exists()
    assert not (tmp_path / "data" / "synthetic").exists()            # nothing synthetic was generated
