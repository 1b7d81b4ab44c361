"""Choosing one series per scan: eligibility (axial, soft-tissue kernel, slices), the paper's rule, overrides."""
from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .dicomio import describe_error
from .geometry import is_axial, normal_angle_deg, slice_normal

#: Words in a kernel name or series description that mark a sharp (bone / lung) reconstruction.
BONE_WORDS = ("BONE", "BONES", "BONEPLUS", "OSTEO", "SKELETON", "LUNG", "LUNGS", "SHARP", "EDGE", "ULTRA", "HIGHRES")
#: Words that mark a soft-tissue (brain) reconstruction; they do not override a bone word.
SOFT_WORDS = ("STANDARD", "STND", "STD", "SOFT", "BRAIN", "PLAIN", "HEAD", "SMOOTH")


def _kernel_sharpness(token: str) -> bool | None:
    """Vendor kernel codes: True (sharp), False (soft) or None (not a known code)."""
    t = token.upper()
    # Siemens: H30s, H70h, Hr38, Br64, J70h, Qr40, Ur77, B60f, C30s, T20f, V40 -> number >= 60 is sharp.
    m = re.fullmatch(r"([HBJQUCTVIDY])[A-Z]?(\d{2})[A-Z]?", t)
    if m:
        return int(m.group(2)) >= 60
    # Toshiba / Canon: FC01-FC28 soft (FC2x head), FC30+ bone and lung.
    m = re.fullmatch(r"FC(\d{2})", t)
    if m:
        return int(m.group(1)) >= 30
    # Philips: A/B/C/UA/UB/UC (soft, brain), D/E/L and YD/YE/YF (sharp, bone, lung).
    if t in ("D", "E", "L", "LA", "YD", "YE", "YF"):
        return True
    if t in ("A", "B", "C", "UA", "UB", "UC", "CB"):
        return False
    return None


def is_bone_kernel(kernel: str, description: str, extra_patterns: Sequence[str] = ()) -> bool:
    """Whether a series is a sharp (bone / lung) reconstruction, from its kernel and description.

    Whole words are compared (so "STANDARD" never matches "D", "CT PLAIN THIN" is soft, "BONE THIN"
    and kernel BONEPLUS are bone); vendor kernel codes are decoded (Siemens Hxx/Bxx/Jxx >= 60,
    Toshiba FCxx >= 30, Philips D/E/L/YD-YF). `extra_patterns`: regular expressions (case-insensitive)
    matched against "kernel description" that also mark bone.
    """
    kernel, description = (kernel or ""), (description or "")
    text = f"{kernel} {description}"
    for p in extra_patterns:
        if re.search(p, text, flags=re.IGNORECASE):
            return True
    words = re.findall(r"[A-Z0-9]+", text.upper())
    if any(w in BONE_WORDS or w.startswith("BONE") for w in words):
        return True
    for token in re.findall(r"[A-Za-z0-9]+", kernel):
        sharp = _kernel_sharpness(token)
        if sharp is not None:
            return sharp
    return False


#: What a scan is: `patient` (one scan per PatientID, as CQ500) or `study` (one per StudyInstanceUID, as RSNA).
SCAN_KEYS = ("patient", "study")


def scan_key_column(scan_key: str) -> str:
    """The index column that names a scan under `scan_key`."""
    if scan_key not in SCAN_KEYS:
        raise ValueError(f"scan key {scan_key!r} is not one of {', '.join(SCAN_KEYS)}")
    return "patient_id" if scan_key == "patient" else "study_uid"


def _scan_col(s: pd.DataFrame) -> str:
    return "scan_id" if "scan_id" in s else "patient_id"


def describe_series(index: pd.DataFrame, bone_patterns: Sequence[str] = (),
                    axial_tolerance_deg: float = 30.0, scan_key: str = "patient") -> pd.DataFrame:
    """One row per (patient, series) with what series selection needs; `scan_id` names the series' scan
    (its PatientID, or its StudyInstanceUID under scan_key `study`)."""
    key = scan_key_column(scan_key)
    rows = []
    for (pid, suid), g in index.groupby(["patient_id", "series_uid"], sort=True):
        first = g.iloc[0]
        normal = slice_normal(first["orientation"])
        z = np.sort(np.array([np.dot(normal, p) for p in g["position"]]))
        gaps = np.diff(z)
        thickness = float(np.nanmedian(g["slice_thickness"].astype(float))) if g["slice_thickness"].notna().any() else np.nan
        if np.isnan(thickness) and len(gaps):       # no SliceThickness (stripped headers, RSNA): the spacing
            thickness = float(np.median(gaps))
        rows.append({
            "scan_id": first[key],
            "patient_id": pid,
            "study_uid": first["study_uid"],
            "series_uid": suid,
            "n_files": len(g),
            "series_description": first["series_description"],
            "kernel": first["kernel"],
            "image_type": first["image_type"],
            "slice_thickness": thickness,
            "spacing_mm": float(np.median(gaps)) if len(gaps) else np.nan,
            "extent_mm": float(z.max() - z.min()) if len(z) else 0.0,
            "normal_angle_deg": round(normal_angle_deg(first["orientation"]), 3),
            "axial": bool(is_axial(first["orientation"], axial_tolerance_deg)),
            "bone_kernel": bool(is_bone_kernel(first["kernel"], first["series_description"], bone_patterns)),
            "sizes": ";".join(sorted({f"{r}x{c}" for r, c in zip(g["rows"], g["columns"])})),
            "source": "dicom",
        })
    return pd.DataFrame(rows)


def read_series_override(path: str | os.PathLike | None) -> dict[str, str]:
    """CSV `patient_id,series_uid` (or `scan_id,series_uid`): the series to use for a scan ('' or '-' = leave
    the scan out)."""
    if not path:
        return {}
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, comment="#")
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the series override CSV ({describe_error(exc)})") from None
    if "scan_id" in df and "patient_id" not in df:
        df = df.rename(columns={"scan_id": "patient_id"})
    if not {"patient_id", "series_uid"} <= set(df.columns):
        raise ValueError(f"{path}: a series override file needs columns patient_id and series_uid")
    df = df.assign(patient_id=df["patient_id"].str.strip(), series_uid=df["series_uid"].str.strip())
    dup = df["patient_id"][df["patient_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{path}: scan(s) listed twice: {', '.join(dup.iloc[:5])}")
    return {p: ("" if s == "-" else s) for p, s in zip(df["patient_id"], df["series_uid"]) if p}


def select_series(series: pd.DataFrame, min_slices: int = 8, min_extent_mm: float = 60.0,
                  override: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The paper's choice: per patient one axial, non-localizer, soft-tissue (non-bone-kernel) series,
    the thinnest among those covering the head (extent >= min_extent_mm); where none covers it, the
    longest. `override` (scan -> series_uid, '' = none) replaces the choice for its scans. A scan is a
    `scan_id` where the table has that column (describe_series), else a patient_id.

    Returns `series` with columns `eligible`, `why_not`, `selected` and `choice` (why the selected
    series was chosen, or why the scan has none; the same for every row of a scan).
    """
    s = series.copy()
    override = dict(override or {})
    why = []
    for _, r in s.iterrows():
        if not r["axial"]:
            why.append(f"not axial (normal {r.get('normal_angle_deg', float('nan')):.0f} deg from z)")
        elif r["bone_kernel"]:
            why.append("bone kernel")
        elif r["n_files"] < min_slices:
            why.append(f"fewer than {min_slices} slices")
        else:
            why.append("")
    s["why_not"] = why
    s["eligible"] = s["why_not"] == ""
    s["selected"] = False
    s["choice"] = ""
    for pid, g in s.groupby(_scan_col(s), sort=True):
        if pid in override:
            want = override[pid]
            if not want:
                s.loc[g.index, "choice"] = "excluded by series_override"
            elif want in set(g["series_uid"]):
                i = g.index[g["series_uid"] == want][0]
                s.loc[i, "selected"] = True
                s.loc[g.index, "choice"] = "series_override" + (f" (note: {s.loc[i, 'why_not']})" if s.loc[i, "why_not"] else "")
            else:
                s.loc[g.index, "choice"] = f"series_override names series {want}, which is not among the scan's {len(g)} series"
            continue
        ok = g[g["eligible"]]
        if ok.empty:
            s.loc[g.index, "choice"] = "no eligible series (" + "; ".join(
                f"{u}: {w}" for u, w in zip(g["series_uid"], g["why_not"])) + ")"
            continue
        covering = ok[ok["extent_mm"] >= min_extent_mm]
        if len(covering):
            order = covering.sort_values(["slice_thickness", "extent_mm", "n_files", "series_uid"],
                                         ascending=[True, False, False, True])
            reason = f"thinnest eligible series covering >= {min_extent_mm:g} mm"
        else:
            order = ok.sort_values(["extent_mm", "slice_thickness", "n_files", "series_uid"],
                                   ascending=[False, True, False, True])
            reason = f"no eligible series covers {min_extent_mm:g} mm: the longest"
        s.loc[order.index[0], "selected"] = True
        s.loc[g.index, "choice"] = f"{reason} ({len(ok)} eligible of {len(g)})"
    return s


def scan_choices(candidates: pd.DataFrame) -> pd.DataFrame:
    """The per-scan manifest: one row per scan (`scan_id`, its patient) with the chosen series (or none) and
    every candidate."""
    rows = []
    for sid, g in candidates.groupby(_scan_col(candidates), sort=True):
        chosen = g[g["selected"]]
        c = chosen.iloc[0] if len(chosen) else None
        rows.append({
            "scan_id": sid,
            "patient_id": (c if c is not None else g.iloc[0])["patient_id"],
            "study_uid": (c if c is not None else g.iloc[0])["study_uid"],
            "series_uid": c["series_uid"] if c is not None else "",
            "series_description": c["series_description"] if c is not None else "",
            "kernel": c["kernel"] if c is not None else "",
            "slice_thickness": c["slice_thickness"] if c is not None else np.nan,
            "n_files": int(c["n_files"]) if c is not None else 0,
            "extent_mm": c["extent_mm"] if c is not None else np.nan,
            "choice": g["choice"].iloc[0],
            "n_series": len(g),
            "n_eligible": int(g["eligible"].sum()),
            "candidates": " | ".join(
                f"{r.series_uid} [{r.series_description}; {r.kernel}; {r.slice_thickness:g} mm; "
                f"{r.n_files} files; {r.extent_mm:.0f} mm; {r.why_not or 'eligible'}]"
                for r in g.itertuples()),
        })
    return pd.DataFrame(rows, columns=["scan_id", "patient_id", "study_uid", "series_uid", "series_description", "kernel",
                                       "slice_thickness", "n_files", "extent_mm", "choice", "n_series",
                                       "n_eligible", "candidates"])
