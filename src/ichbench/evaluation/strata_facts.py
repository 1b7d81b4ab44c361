"""Facts per slice and series for the strata: bleed area and position from the cache, acquisition and scanner from
the header tables, subtypes and datasets from the manifests."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..inputs.npz import read_members as npz_members

#: stratum kind -> series table columns that may hold it (the first present wins)
TEXT_COLUMNS = {"manufacturer": ("manufacturer",), "model": ("manufacturer_model_name", "model_name", "model"),
                "kernel": ("kernel", "convolution_kernel"), "dataset": ("dataset",)}


def _read(tables) -> pd.DataFrame:
    if isinstance(tables, pd.DataFrame):
        return tables
    return pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in tables], ignore_index=True)


def series_headers(tables) -> pd.DataFrame:
    """Per series_uid (index): the TEXT_COLUMNS kinds and `flip` (its slice normal points to the feet) from
    header tables (series_selected.csv, the per-file index.csv: the first non-empty value per series)."""
    out = pd.DataFrame()
    for t in ([tables] if isinstance(tables, pd.DataFrame) else [_read([p]) for p in (tables or [])]):
        if "series_uid" not in t:
            continue
        t = t.astype({c: str for c in t.columns if t[c].dtype == object}).replace({"": np.nan, "nan": np.nan})
        cols = {kind: next((c for c in names if c in t), None) for kind, names in TEXT_COLUMNS.items()}
        keep = {c: kind for kind, c in cols.items() if c}
        if "orientation" in t:
            keep["orientation"] = "orientation"
        first = t[["series_uid"] + list(keep)].groupby("series_uid").first().rename(columns=keep)
        out = first if out.empty else out.combine_first(first)
    if "orientation" in out:
        o = out["orientation"].fillna("").str.split("\\", expand=True).apply(pd.to_numeric, errors="coerce")
        if o.shape[1] >= 6:                   # z of (row direction x column direction)
            out["flip"] = (o[0] * o[4] - o[1] * o[3]).to_numpy(float) < 0
        out = out.drop(columns="orientation")
    return out


def slice_spacing(gaps: np.ndarray, n: int, thickness: float) -> np.ndarray:
    """Per slice: the mean gap to its neighbours along the normal (one gap at the ends; the thickness alone)."""
    gaps = np.asarray(gaps, float)
    if n < 2 or len(gaps) != n - 1:
        return np.full(n, float(thickness))
    g = np.r_[gaps[0], gaps, gaps[-1]]
    return (g[:-1] + g[1:]) / 2


#: the cached series' members read_facts takes
FACT_MEMBERS = ("sop_uids", "gt_area_mm2", "slice_thickness", "spacing", "slice_index", "tilt_deg", "pixel_spacing")


def read_facts(manifests, series_tables=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """-> (slices: sop_uid, series_uid, area_mm2, third (0 lowest .. 2 highest); series: series_uid, patient_id,
    n_slices, volume_ml, slice_thickness, tilt_deg, pixel_spacing_mm, subtypes, the header kinds), from each
    series' cached NPZ (one read per series, named by the manifests' `npz`)."""
    man = _read(manifests)
    one = man.drop_duplicates("series_uid")
    heads = series_headers(series_tables) if series_tables is not None else pd.DataFrame()
    flip = heads["flip"].fillna(False).astype(bool) if "flip" in heads else pd.Series(dtype=bool)
    slices, series = [], []
    for suid, pid, npz in one[["series_uid", "patient_id", "npz"]].itertuples(index=False):
        z = npz_members(npz, FACT_MEMBERS)
        if "sop_uids" not in z:
            raise ValueError(f"{npz}: no sop_uids; not a cached series (rerun preprocessing)")
        sops = z["sop_uids"].astype(str)
        n = len(sops)
        area = z["gt_area_mm2"].astype(float) if "gt_area_mm2" in z else np.full(n, np.nan)
        thick = float(z["slice_thickness"]) if "slice_thickness" in z else np.nan
        gaps = z.get("spacing", np.zeros(0))
        rank = z["slice_index"].astype(int) if "slice_index" in z else np.arange(n)
        series.append({"series_uid": suid, "patient_id": pid, "n_slices": n,
                       "volume_ml": float(np.sum(area * slice_spacing(gaps, n, thick))) / 1000.0,
                       "slice_thickness": thick,
                       "tilt_deg": float(z["tilt_deg"]) if "tilt_deg" in z else np.nan,
                       "pixel_spacing_mm": float(np.mean(z["pixel_spacing"])) if "pixel_spacing" in z else np.nan})
        if bool(flip.get(suid, False)):
            rank = n - 1 - rank
        slices.append((sops, np.full(n, suid, object), area, np.minimum(2, 3 * rank // max(n, 1))))
    cols = ["sop_uid", "series_uid", "area_mm2", "third"]
    slices = pd.DataFrame({c: np.concatenate([s[i] for s in slices]) if slices else [] for i, c in enumerate(cols)})
    series = pd.DataFrame(series, columns=["series_uid", "patient_id", "n_slices", "volume_ml", "slice_thickness",
                                           "tilt_deg", "pixel_spacing_mm"])
    if "subtypes" in man:
        sub = man.groupby("series_uid")["subtypes"].first()          # per scan: studies of a patient differ
        series["subtypes"] = series["series_uid"].map(sub).fillna("").astype(str)
    if not heads.empty:
        series = series.join(heads.drop(columns="flip", errors="ignore"), on="series_uid")
    if "dataset" in man and "dataset" not in series:
        series["dataset"] = series["series_uid"].map(one.set_index("series_uid")["dataset"]).replace({"": np.nan})
    return slices, series
