"""Strata: slice AUC and sensitivity at the validation-chosen thresholds by bleed size, position, acquisition, dataset and subtype; scan AUC by bleed volume.

Units are the test parts' (`stats.slice_units`): slices under the slice protocol rebuilt from the slice truth
(`from_truth`) where the run has slice truth, else under the configured labels. A stratum is a set of
anomalous units; the slices of anomalous scans that are not anomalous (no bleed on the slice, unknown truth)
are in no stratum, and neither are they normals. Each stratum's anomalous units are ranked against normals:

- bleed size, slice position, subtype and `all`: against the SAME normals, every test slice of a normal scan;
- acquisition (slice thickness, gantry tilt, pixel spacing; manufacturer, model and kernel where the series
  tables have them) and dataset: against the normal test slices of the same stratum, because these are
  properties of the normal scans too (thin-slice bleeds ranked against thick-slice normals would measure the
  slice thickness, not the bleed).

The strata:

- `bleed size (mm^2)`: the slice's hemorrhage area at full resolution (`gt_area_mm2` of the cache) in the bins
  `evaluation.size_bins_mm2`, [lo, hi) with the last one open (e.g. <100, 100-500, 500-2000, >2000). Anomalous
  slices without an area (truth from a slice label table, not from pixels) are in no size stratum.
- `slice position`: lowest, middle and highest third of the scan's slices. The cache sorts a series along its
  slice normal (row x column direction of ImageOrientationPatient), positions increasing with `slice_index`;
  for axial slices that normal is the +z axis of the DICOM patient system, towards the head, so `slice_index`
  0 is the LOWEST slice (skull base) and the last the highest (vertex). A series table with the header
  index's `orientation` column turns round a series whose normal points to the feet.
- `slice thickness (mm)`, `gantry tilt (deg)`, `pixel spacing (mm)` (the cache's `slice_thickness`, `tilt_deg`,
  mean `pixel_spacing`; bins `ACQUISITION_BINS`), and `manufacturer`, `model`, `kernel` from the series tables
  (`TEXT_COLUMNS`) where they have them; `dataset`, one stratum per value, where a `dataset` column exists.
- `subtype`: the patients' bleed subtypes (the manifests' `subtypes`, as `extra_tables.subtype_table`), one
  stratum per subtype (a patient with several is in each), and `no bleed code`.
- `bleed volume (ml)` at scan level: per anomalous scan, the sum over its slices of `gt_area_mm2` x the slice
  spacing (mean gap to its neighbours), in the bins `evaluation.volume_bins_ml`; scan scores as Table 1's
  (`stats.scan_units`), against every normal test scan.

Per row and stratum: `AUC`, the mean over the folds whose stratum has both classes (as Table 1); and
`sensitivity@<rule>`, the share of the stratum's anomalous units scored above their own fold's threshold,
pooled over folds, at the thresholds `operating.thresholds` sets on each fold's validation part from the same
kind of units (`spec90/95/99 (validation)`, `youden (validation)`). 95 % CIs: percentiles of the patient
bootstrap of Table 1 (`stats.patient_counts` on the same patient table and seed: the same draws); a draw that
leaves a stratum without a class is dropped. `n_units` / `n_patients`: the stratum's anomalous units and
patients over all folds; `n_normal_units`: the normals ranked against them. A stratum with fewer than
`min_units` anomalous units (for the AUC also fewer normal units) has no value (NaN) and `too_few` set.

Cost: per row and fold the normals of a stratum are sorted once; in every draw their patients' counts are
cumulated along that order and each anomalous unit's weighted normals below it (ties half) gathered from it,
so a draw costs a few passes over the fold's units, shared by every stratum ranked against the same normals
(the (anomalous x normal patient) products this replaced grew with the square of the patients).
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from ..cohort import subtypes as subtype_codes
from . import operating, stats
from .kernels import stratum_aucs
from .strata_facts import TEXT_COLUMNS, read_facts, series_headers, slice_spacing  # noqa: F401  (strata's API)

SIZE_BINS_MM2 = (0.0, 100.0, 500.0, 2000.0)
VOLUME_BINS_ML = (0.0, 5.0, 30.0)
#: stratum kind -> (series fact, bin edges); last bin open
ACQUISITION_BINS = {"slice thickness (mm)": ("slice_thickness", (0.0, 1.5, 3.5)),
                    "gantry tilt (deg)": ("tilt_deg", (0.0, 0.5, 15.0)),
                    "pixel spacing (mm)": ("pixel_spacing_mm", (0.0, 0.5, 0.8))}
POSITIONS = ("lowest third", "middle third", "highest third")
MIN_UNITS = 10
SENSITIVITY_RULE = "spec95 (validation)"
COLUMNS = ["method", "stratum_kind", "stratum", "level", "labels", "metric", "value", "ci_low", "ci_high",
           "n_units", "n_patients", "n_normal_units", "too_few"]


# --- bins ------------------------------------------------------------------------------------------------------


def _edges(edges: Sequence[float]) -> list[float]:
    e = [float(x) for x in edges]
    if not e or not math.isinf(e[-1]):
        e.append(math.inf)
    if any(b <= a for a, b in zip(e[:-1], e[1:])):
        raise ValueError(f"bin edges must increase: {list(edges)}")
    return e


def bin_labels(edges: Sequence[float]) -> list[str]:
    """[0, 100, 500, 2000] -> `<100`, `100-500`, `500-2000`, `>2000` (bins [lo, hi), the last open)."""
    e = _edges(edges)
    return [f">{lo:g}" if math.isinf(hi) else f"<{hi:g}" if lo <= 0 else f"{lo:g}-{hi:g}"
            for lo, hi in zip(e[:-1], e[1:])]


def bin_of(values, edges: Sequence[float]) -> np.ndarray:
    """The bin label of each value (object array); None for NaN or a value below the first edge."""
    e = np.asarray(_edges(edges))
    labels = np.array(bin_labels(edges) + [None], object)
    v = np.asarray(values, float)
    k = np.searchsorted(e, v, side="right") - 1
    return labels[np.where(np.isfinite(v) & (k >= 0) & (k < len(e) - 1), k, len(e) - 1)]


# --- strata of one row's units ------------------------------------------------------------------------------------

Stratum = tuple[str, str, np.ndarray, "np.ndarray | None"]     # kind, name, anomalous units, its normals (None: all)


class Positions:
    """Rows of unique `keys` for unit IDs (`pd.Index(keys).get_indexer(ids)`, -1 where absent), its hash table
    built once for every row; categorical IDs (read_scores') looked up once per category, not per unit."""

    def __init__(self, keys):
        self.index = pd.Index(keys)
        self._cats: tuple | None = None                # (categories, their rows) last looked up

    def __call__(self, ids: pd.Series) -> np.ndarray:
        if not isinstance(ids.dtype, pd.CategoricalDtype):
            return self.index.get_indexer(ids)
        cats = ids.cat.categories
        if self._cats is None or not (self._cats[0] is cats or self._cats[0].equals(cats)):
            self._cats = (cats, self.index.get_indexer(cats))
        codes = ids.cat.codes.to_numpy()
        return np.where(codes >= 0, self._cats[1][np.maximum(codes, 0)], -1)


def _fact(frame: pd.DataFrame, col: str, idx: np.ndarray, fill=np.nan) -> np.ndarray:
    """frame[col] at rows idx, `fill` where idx is -1 (a unit without facts)."""
    if frame.empty or col not in frame:
        return np.full(len(idx), fill, object if fill is None else None)
    return np.where(idx >= 0, frame[col].to_numpy()[np.maximum(idx, 0)], fill)


def _text_strata(kind: str, values: np.ndarray, anom, normal) -> Iterator[Stratum]:
    vals = pd.Series(values, dtype=object).fillna("unknown").astype(str).to_numpy()
    for v in sorted(set(vals[anom | normal])):
        yield kind, v, anom & (vals == v), normal & (vals == v)


def slice_strata(u: pd.DataFrame, slices: pd.DataFrame, series: pd.DataFrame,
                 size_bins: Sequence[float] = SIZE_BINS_MM2, slice_at: Positions | None = None,
                 series_at: Positions | None = None) -> Iterator[Stratum]:
    """The slice strata of one row's test slice units (see the module docstring). `slice_at`, `series_at`: the
    lookups of `slices` and `series` by ID, kept from row to row."""
    anom = ((u["y"] == 1) & (u["scan_label"] == 1)).to_numpy()
    normal = (u["scan_label"] == 0).to_numpy()
    yield "all", "all", anom, None
    si = (slice_at or Positions(slices["sop_uid"]))(u["sop_uid"])
    area = _fact(slices, "area_mm2", si).astype(float)
    size = bin_of(np.where(area > 0, area, np.nan), size_bins)
    for name in bin_labels(size_bins):
        yield "bleed size (mm^2)", name, anom & (size == name), None
    third = _fact(slices, "third", si, -1)
    for k, name in enumerate(POSITIONS):
        yield "slice position", name, anom & (third == k), None
    ser = (series_at or Positions(series["series_uid"]))(u["series_uid"])
    for kind, (col, edges) in ACQUISITION_BINS.items():
        lab = bin_of(_fact(series, col, ser).astype(float), edges)
        for name in bin_labels(edges):
            if (lab[anom | normal] == name).any():
                yield kind, name, anom & (lab == name), normal & (lab == name)
    for kind in TEXT_COLUMNS:
        if kind in series and series[kind].notna().any():
            yield from _text_strata(kind, _fact(series, kind, ser, None), anom, normal)
    if "subtypes" in series and (series["subtypes"] != "").any():
        codes = series["subtypes"]                                   # per series, then to the units
        for t in subtype_codes.SUBTYPES:
            yield "subtype", t, anom & _fact(series.assign(_k=subtype_codes.has(codes, t)), "_k", ser, False), None
        yield "subtype", "no bleed code", anom & _fact(series.assign(_k=codes == ""), "_k", ser, False), None


def scan_strata(u: pd.DataFrame, series: pd.DataFrame, volume_bins: Sequence[float] = VOLUME_BINS_ML,
                series_at: Positions | None = None) -> Iterator[Stratum]:
    """The scan strata of one row's test scan units: all, bleed volume."""
    anom = (u["y"] == 1).to_numpy()
    yield "all", "all", anom, None
    ser = (series_at or Positions(series["series_uid"]))(u["series_uid"])
    vol = np.where(ser >= 0, series["volume_ml"].to_numpy(float)[np.maximum(ser, 0)], np.nan)
    lab = bin_of(np.where(vol > 0, vol, np.nan), volume_bins)
    for name in bin_labels(volume_bins):
        yield "bleed volume (ml)", name, anom & (lab == name), None


# --- the metrics of one row's strata -------------------------------------------------------------------------------


class _RowPairs:
    """One row's test units split by fold: its anomalous and normal units per fold (for the AUC: the normals
    sorted once; a draw cumulates their weights along them and gathers each anomalous unit's weighted normals
    below it, in one compiled pass, `kernels.stratum_aucs`)."""

    def __init__(self, u: pd.DataFrame, pidx: np.ndarray, anom: np.ndarray, normal: np.ndarray):
        self.pidx, self.score = pidx, u["score"].to_numpy(float)
        fold = u["fold"].to_numpy()
        self.folds = []
        for f in np.unique(fold):
            a, nrm = np.nonzero(anom & (fold == f))[0], np.nonzero(normal & (fold == f))[0]
            if len(a) and len(nrm):
                self.folds.append((a, nrm))

    def auc(self, anom: np.ndarray, normal: np.ndarray | None, counts: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean over folds of the stratum's AUC (%), and its value in every draw of patient `counts`."""
        return self.auc_many([(anom, normal)], counts)[0]

    def auc_many(self, strata, counts: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """`auc` of every (anomalous units, their normals or None: all) in `strata`; the strata ranked against
        the same normals share one pass over them per draw. Every sum is of integers or halves: exact."""
        points = [[] for _ in strata]
        draws = [[] for _ in strata]
        counts = np.ascontiguousarray(counts)
        for a, nrm in self.folds:
            groups: dict = {}
            for k, (anom, normal) in enumerate(strata):
                cols = nrm if normal is None else nrm[normal[nrm]]
                if anom[a].any() and len(cols):
                    groups.setdefault(-1 if normal is None else k, (cols, []))[1].append((k, a[anom[a]]))
            for cols, members in groups.values():
                normal_scores = np.sort(self.score[cols], kind="stable")
                for k, ai in members:
                    lt = np.searchsorted(normal_scores, self.score[ai], "left")
                    le = np.searchsorted(normal_scores, self.score[ai], "right")
                    points[k].append(100 * float(np.sum(lt + 0.5 * (le - lt))) / (len(ai) * len(cols)))
                # every normal and each member's anomalous units by ascending score, normals first when tied
                units = np.concatenate([cols] + [ai for _, ai in members])
                member = np.concatenate([np.full(len(cols), -1)] + [np.full(len(ai), j) for j, (_, ai)
                                                                    in enumerate(members)]).astype(np.int32)
                score = self.score[units]
                order = np.lexsort((member, score))
                score, member = score[order], member[order]
                last = np.r_[score[1:] != score[:-1], True]
                code = self.pidx[units][order].astype(np.int64) * 2 + last
                res = np.empty((len(members), len(counts)))
                stratum_aucs(code, member, counts, len(members), res)
                for j, (k, _) in enumerate(members):
                    draws[k].append(res[j])
        return [(np.nan, np.full(len(counts), np.nan)) if not pts else
                (float(np.mean(pts)), np.mean(np.stack(d, 1), axis=1)) for pts, d in zip(points, draws)]

    def sensitivity(self, anom: np.ndarray, thr: np.ndarray, counts: np.ndarray) -> tuple[float, np.ndarray]:
        """Share (%) of the stratum's units above their fold's threshold `thr` (per unit), pooled over folds."""
        return self.sensitivity_many([(anom, thr)], counts)[0]

    def sensitivity_many(self, items, counts: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """`sensitivity` of every (anomalous units, thresholds) in `items`: each one's per-patient hits and units
        as two columns of one (patients x 2 items) matrix, and one product with the draws' counts for all."""
        n_pat = counts.shape[1]
        cols, keep = [], []
        for anom, thr in items:
            idx = np.nonzero(anom & np.isfinite(thr))[0]
            keep.append(len(idx) > 0)
            if len(idx):
                cols += [np.bincount(self.pidx[idx], weights=(self.score[idx] > thr[idx]).astype(float),
                                     minlength=n_pat), np.bincount(self.pidx[idx], minlength=n_pat).astype(float)]
        d = counts.astype(float) @ np.stack(cols, 1) if cols and len(counts) else np.zeros((len(counts), len(cols)))
        out, i = [], 0
        with np.errstate(invalid="ignore", divide="ignore"):
            for ok in keep:
                if not ok:
                    out.append((np.nan, np.full(len(counts), np.nan)))
                    continue
                tp, n = cols[i], cols[i + 1]
                out.append((float(100 * tp.sum() / n.sum()), 100 * d[:, i] / d[:, i + 1]))
                i += 2
        return out


def level_table(test: pd.DataFrame, val: pd.DataFrame, strata_of, method_order: Sequence[str], *, level: str,
                labels: str, targets: Sequence[float] = operating.TARGETS, min_units: int = MIN_UNITS,
                n_boot: int = 1000, seed: int = 0, ci_level: float = 0.95) -> pd.DataFrame:
    """The rows of COLUMNS for one kind of units (test / val: stats.slice_units or scan_units frames);
    `strata_of(units of one row)` yields its strata."""
    thr = operating.thresholds(val, test, targets)
    thr = thr[thr["kind"].isin(["spec", "youden"])] if not thr.empty else thr
    patients = stats.patient_table(test)
    counts = (stats.patient_counts(patients, n_boot, seed) if n_boot > 0
              else np.zeros((0, len(patients)), np.int32))
    out = []
    by_method = dict(tuple(test.groupby("method", sort=False)))                   # one pass, not one per row
    for method in [m for m in method_order if m in by_method]:
        u = by_method[method].reset_index(drop=True)
        pidx = stats.patient_index(u, patients)
        tm = thr[thr["method"] == method] if not thr.empty else thr
        rules = {r: u["fold"].map(g.set_index("fold")["threshold"]).to_numpy(float)
                 for r, g in (tm.groupby("rule", sort=False) if not tm.empty else [])}
        strata = list(strata_of(u))
        pairs = _RowPairs(u, pidx, strata[0][2], (u["scan_label"] == 0).to_numpy())
        n_normal_all = int((u["scan_label"] == 0).sum())
        n_normal_of = lambda normal: n_normal_all if normal is None else int(normal.sum())  # noqa: E731
        auc_of = [k for k, (_, _, anom, normal) in enumerate(strata)
                  if int(anom.sum()) >= min_units and n_normal_of(normal) >= min_units]
        aucs = dict(zip(auc_of, pairs.auc_many([strata[k][2:] for k in auc_of], counts)))
        sens_of = [(j, r) for j, (_, _, anom, _) in enumerate(strata) if int(anom.sum()) >= min_units for r in rules]
        sens = dict(zip(sens_of, pairs.sensitivity_many([(strata[j][2], rules[r]) for j, r in sens_of], counts)))
        for j, (kind, name, anom, normal) in enumerate(strata):
            n_units = int(anom.sum())
            n_normal = n_normal_all if normal is None else int(normal.sum())
            base = {"method": method, "stratum_kind": kind, "stratum": name, "level": level, "labels": labels,
                    "n_units": n_units, "n_patients": int(len(np.unique(pidx[anom]))), "n_normal_units": n_normal}
            metrics = [("AUC", n_units < min_units or n_normal < min_units, lambda j=j: aucs[j])]
            metrics += [(f"sensitivity@{r}", n_units < min_units, lambda j=j, r=r: sens[j, r])
                        for r in rules]
            for metric, too_few, compute in metrics:
                value, draws = (np.nan, None) if too_few else compute()
                lo, hi = stats.percentile_ci(draws, ci_level) if draws is not None and len(draws) else (np.nan, np.nan)
                out.append({**base, "metric": metric, "value": value, "ci_low": lo, "ci_high": hi,
                            "too_few": bool(too_few)})
    return pd.DataFrame(out, columns=COLUMNS)


def strata_table(scores: pd.DataFrame, manifests, series_table, method_order: Sequence[str], *,
                 targets: Sequence[float] = operating.TARGETS, size_bins_mm2: Sequence[float] = SIZE_BINS_MM2,
                 volume_bins_ml: Sequence[float] = VOLUME_BINS_ML, min_units: int = MIN_UNITS, n_boot: int = 1000,
                 seed: int = 0, scan_aggregation: str = "max", top_k: int = 3) -> pd.DataFrame:
    """COLUMNS per row, stratum and metric: the slice strata, then the scan strata (see the module docstring).
    `manifests`, `series_table`: paths (or frames) of the fold manifests and of header tables (None: none)."""
    slices, series = read_facts(manifests, series_table)
    t = scores[scores["part"] == "test"]
    from_truth = "slice_truth" in t and bool(((t["scan_label"] == 1) & (t["slice_truth"] >= 0)).any())
    kw = dict(targets=targets, min_units=min_units, n_boot=n_boot, seed=seed)
    name = f"top{top_k}" if scan_aggregation == "topk" else scan_aggregation
    slice_at, series_at = Positions(slices["sop_uid"]), Positions(series["series_uid"])
    parts = [level_table(stats.slice_units(scores, from_truth, "test"), stats.slice_units(scores, from_truth, "val"),
                         lambda u: slice_strata(u, slices, series, size_bins_mm2, slice_at, series_at), method_order,
                         level="slice", labels="slice truth" if from_truth else "configured labels", **kw),
             level_table(stats.scan_units(scores, scan_aggregation, top_k, "test"),
                         stats.scan_units(scores, scan_aggregation, top_k, "val"),
                         lambda u: scan_strata(u, series, volume_bins_ml, series_at), method_order,
                         level=f"scan ({name})",
                         labels="scan label", **kw)]
    return pd.concat([p for p in parts if not p.empty] or [parts[0]], ignore_index=True)
