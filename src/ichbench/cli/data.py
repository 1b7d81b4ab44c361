"""Subcommands from raw scans to fold manifests: synth, index, preprocess, pack, bhx-transfer, split."""
from __future__ import annotations

import json
import logging
from pathlib import Path


def cmd_synth(a) -> None:
    from ..synthetic import SyntheticConfig, generate

    params = json.loads(a.params) if a.params else {}
    params.pop("out_dir", None)
    summary = generate(a.out, SyntheticConfig(**params), workers=a.workers)
    logging.info("synthetic dataset written to %s: %s", a.out, summary)


def cmd_index(a) -> None:
    from ..cache.preprocess import build_index

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.nifti_dir:
        from ..inputs.nifti import build_index as build_nifti_index

        cand = build_nifti_index(a.nifti_dir, out / "index.csv", out / "series_candidates.csv",
                                 out / "rejected_index.csv", masks_dir=a.nifti_masks_dir or None,
                                 min_slices=a.min_slices)
    else:
        cand = build_index(a.dicom_dir, out / "index.csv", out / "series_candidates.csv", out / "rejected_index.csv",
                           min_slices=a.min_slices, min_extent_mm=a.min_extent_mm, workers=a.workers,
                           series_override=a.series_override or None,
                           bone_patterns=json.loads(a.bone_patterns) if a.bone_patterns else (),
                           axial_tolerance_deg=a.axial_tolerance_deg, scan_key=a.scan_key,
                           file_list=a.file_list or None)
    scans = cand["scan_id"] if "scan_id" in cand else cand["patient_id"]
    logging.info("%d series of %d scans (%d patients); %d selected (see %s)", len(cand), scans.nunique(),
                 cand["patient_id"].nunique(),
                 int(cand["selected"].sum()), out / "series_selected.csv")


def cmd_preprocess(a) -> None:
    import gc

    from ..cache.preprocess import cache_shard
    from ..inputs.windowing import windows_from_config

    # the objects made so far (the modules) live to the end of this process: out of the garbage collector's
    # scans, which pydicom's objects of every file trigger (0.07 CPU-s per 1,000 slices; nothing else changes)
    gc.freeze()

    data = Path(a.data)
    rows = cache_shard(data / "index.csv", data / "series_candidates.csv", a.out, shard=a.shard,
                       n_shards=a.n_shards, windows=windows_from_config(json.loads(a.windows)),
                       size=a.size, gt_dir=a.gt_dir or None, workers=a.workers,
                       boxes=[b for b in (a.boxes or []) if b] or None, non_hu=a.non_hu)
    logging.info("shard %d/%d: %d series, %d slices cached", a.shard, a.n_shards, len(rows),
                 sum(int(r["n_slices"]) for r in rows))
    from ..cache.pack import pack_shard, store_needed

    n_windows = len(json.loads(a.windows))
    if a.store == "auto" and not store_needed(data, n_windows, a.size, a.store_budget_gb):
        # every fold fits the memory budget, so no job reads the store: not written (a job that needs it packs it)
        logging.info("slice store: not written (the cohort's slices fit %.1f GB; --store always writes it)",
                     a.store_budget_gb)
        return
    packed = pack_shard(a.out)      # the memory-mappable slice store beside the NPZs (cache/pack.py)
    logging.info("slice store: %s", packed or "none (no series)")


def cmd_pack(a) -> None:
    from ..cache.pack import pack_shard

    for shard in a.cache:
        logging.info("%s: slice store %s", shard, pack_shard(shard) or "not written (no series)")


def cmd_bhx_transfer(a) -> None:
    import pandas as pd

    from ..cache.preprocess import read_index
    from ..datasets import bhx, bhx_transfer

    boxes = bhx.read_bhx([b for b in a.boxes if b])
    chosen = pd.read_csv(a.series, dtype={"patient_id": str, "study_uid": str, "series_uid": str})
    moved, record = bhx_transfer.transfer(boxes, read_index(a.index), chosen)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    bhx_transfer.to_bhx_format(moved).to_csv(a.out, index=False)
    record.to_csv(a.record, index=False)
    s = bhx_transfer.summary(record)
    logging.info("BHX: %d boxes of %d scans; %d on the chosen series, %d moved there by patient coordinates "
                 "(onto %d slices), %d dropped; %d scans keep a box", s["boxes"], s["scans"], s["boxes_on_chosen"],
                 s["boxes_transferred"], int((moved["transfer"] == bhx_transfer.BY_COORDS).sum()),
                 s["boxes_dropped"], s["scans_kept"])
    for reason, n in s["dropped_by_reason"].items():
        logging.info("  %d boxes %s", n, reason)


def cmd_split(a) -> None:
    import pandas as pd

    from ..cohort import assignment, guards, splits, subtypes
    from ..datasets import bhx, labels
    from ..inputs import dicomio, rejections

    slices = splits.collect_slices(a.shards, a.min_hemorrhage_area_mm2, scan_key=a.scan_key)
    if a.patients and Path(a.patients).exists():
        slices = splits.apply_patients(slices, pd.read_csv(a.patients, dtype=str, keep_default_na=False))
    if a.slice_labels and Path(a.slice_labels).exists():
        slices = splits.apply_slice_labels(slices, labels.read_slice_labels(a.slice_labels))
    scan_labels = labels.scan_labels(a.label_source, ctfsh=a.labels, reads=a.reads, scan_id_format=a.scan_id_format,
                                     table=a.labels, slices=slices, keep_undecided=True)
    cohort, problems = splits.build_cohort(slices, scan_labels)
    problems = _excluded(problems, a.excluded)
    cohort = subtypes.attach(cohort, _scan_info(a))
    rejected = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in a.rejected_in if Path(p).exists()]
    # a missing download told apart from a scan whose files hold no usable series
    problems = rejections.explain_unlabelled_scans(problems, pd.concat(rejected, ignore_index=True) if rejected
                                                   else pd.DataFrame())
    rejected.append(rejections.rejections_frame(dicomio.Rejection(s, r, "labels") for s, r in problems))
    rejections.log_summary(problems, logging.getLogger("ichbench.split"), "scans")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(a.rejected_out).parent.mkdir(parents=True, exist_ok=True)
    pd.concat(rejected, ignore_index=True).to_csv(a.rejected_out, index=False)
    boxes = bhx.read_bhx([b for b in (a.boxes or []) if b])
    if a.boxes_out:
        matched = bhx.match_boxes(cohort if not cohort.empty else slices, boxes)
        matched.to_csv(a.boxes_out, index=False)
        if len(boxes):
            logging.info("BHX: %d boxes read, %d lie on cached cohort slices (%d slices, %d series, %d scans)",
                         len(boxes), len(matched), matched["sop_uid"].nunique(), matched["series_uid"].nunique(),
                         matched["patient_id"].nunique())
            if "transfer" in matched:
                logging.info("BHX boxes kept by transfer kind: %s", matched["transfer"].value_counts().to_dict())
    if cohort.empty:
        raise ValueError(f"no scan has both a usable series and a label; see {a.rejected_out}")
    summary = splits.cohort_summary(cohort, a.protocol, a.label_source)
    summary = summary.merge(subtypes.cohort_counts(cohort), on="scan_class", how="left")
    summary.to_csv(a.cohort, index=False)
    logging.info("cohort (%s labels, %s protocol):\n%s", a.label_source, a.protocol,
                 summary.drop(columns=["protocol", "label_source"]).to_string(index=False))
    guards.check_expected(summary, json.loads(a.expected) if a.expected else None, a.expected_action)
    patients = splits.patient_table(cohort)
    if a.assignment_in:
        parts, _ = assignment.parts_from(assignment.read(a.assignment_in), patients, a.n_folds,
                                         source=a.assignment_in)
    else:
        parts = splits.assign_folds(patients, a.n_folds, a.val_fraction, a.seed)
    if a.assignment_out:
        assignment.to_table(parts, patients).to_csv(a.assignment_out, index=False)
    manifests = splits.make_manifests(cohort, a.protocol, a.n_folds, a.val_fraction, a.seed, parts=parts)
    for k, m in enumerate(manifests):
        m.to_csv(out / f"fold-{k}.csv", index=False)
        logging.info("fold %d: %s", k, m.groupby(["part", "label"]).size().to_dict())
    splits.choose_figure_cases(manifests, a.figure_cases, a.figure_seed).to_csv(out / "figure_cases.csv", index=False)


def cmd_datasets(a) -> None:
    from ..datasets import adapter

    print(adapter.describe())


def cmd_dataset_labels(a) -> None:
    from ..datasets import adapter

    ds = json.loads(a.dataset)
    for line in adapter.get(adapter.name_of(ds)).derive(ds, a.index, Path(a.out)):
        logging.info("%s", line)


def cmd_dataset_files(a) -> None:
    from ..datasets import adapter

    ds = json.loads(a.dataset)
    for line in adapter.get(adapter.name_of(ds)).index_files(ds, Path(a.out)):
        logging.info("%s", line)


def _excluded(problems, path):
    """A dataset adapter's excluded.csv (scan_id, reason): those scans are reported with the adapter's reason."""
    import pandas as pd

    if not path or not Path(path).exists():
        return problems
    why = dict(pd.read_csv(path, dtype=str, keep_default_na=False)[["scan_id", "reason"]].itertuples(index=False))
    out = [(s, r) for s, r in problems if s not in why]
    return out + [(s, f"left out by the dataset adapter: {r}") for s, r in sorted(why.items())]


def _scan_info(a):
    """Per-scan diagnosis, subtypes and reader ICH votes (subtypes.py): a dataset adapter's scan_info.csv
    where given, else the CTFSH diagnosis under label_source ctfsh, the reads majority otherwise (where a
    reads file exists)."""
    from ..cohort import subtypes
    from ..datasets import labels

    if a.scan_info and Path(a.scan_info).exists():
        import pandas as pd

        info = pd.read_csv(a.scan_info, dtype={"scan_id": str, "diagnosis": str, "subtypes": str},
                           keep_default_na=False)
        return info.assign(reader_ich_votes=pd.to_numeric(info["reader_ich_votes"], errors="coerce").fillna(-1))

    ctfsh = labels.read_ctfsh(a.labels, a.scan_id_format) if a.label_source == "ctfsh" and a.labels else None
    reads = a.reads if a.reads and Path(a.reads).is_file() else None
    try:
        return subtypes.scan_info(ctfsh, reads)
    except (KeyError, ValueError, TypeError) as exc:
        raise labels.LabelError(f"{reads}: cannot read reader ICH votes and subtypes ({exc})") from None


def add_commands(command) -> None:
    """Register this group's subcommands through `command(name, help, func)` (see `build_parser`)."""
    s = command("synth", "write the built-in synthetic head CT dataset", cmd_synth)
    s.add_argument("--out", required=True, help="output folder (dicom/, masks/, label files)")
    s.add_argument("--params", help="JSON of SyntheticConfig fields (the `synthetic:` keys of config.yaml)")
    s.add_argument("--workers", type=int, default=1, help="worker processes")

    s = command("index", "index a DICOM (or NIfTI) folder by headers and choose one series per scan", cmd_index)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--dicom-dir", help="folder searched recursively for DICOM files")
    src.add_argument("--nifti-dir", help="folder of .nii/.nii.gz CT volumes in HU (one per scan) instead of DICOM")
    s.add_argument("--nifti-masks-dir", help="folder of same-shape hemorrhage masks for --nifti-dir")
    s.add_argument("--out", required=True,
                   help="folder for index.csv, series_candidates.csv, series_selected.csv, rejected_index.csv")
    s.add_argument("--min-slices", type=int, default=8, help="fewest slices an eligible series has")
    s.add_argument("--min-extent-mm", type=float, default=60.0,
                   help="the thinnest series covering at least this extent (mm) is chosen")
    s.add_argument("--series-override", help="CSV patient_id,series_uid replacing the automatic series choice")
    s.add_argument("--bone-patterns", help="JSON list of extra regular expressions marking bone-kernel series")
    s.add_argument("--axial-tolerance-deg", type=float, default=30.0,
                   help="largest angle (degrees) between the slice normal and the head axis of an axial series")
    s.add_argument("--workers", type=int, default=1, help="worker processes reading headers")
    s.add_argument("--file-list", help="index only the files this text file names (one a line, relative to "
                   "--dicom-dir or absolute), e.g. a dataset adapter's scans of a large folder")
    s.add_argument("--scan-key", default="patient", choices=["patient", "study"],
                   help="what a scan is: one per PatientID, or one per StudyInstanceUID (RSNA)")

    s = command("preprocess", "cache one shard of the chosen series as windowed NPZ", cmd_preprocess)
    s.add_argument("--data", required=True, help="folder written by `index`")
    s.add_argument("--out", required=True, help="folder of this shard's NPZ files, series.csv and rejected.csv")
    s.add_argument("--shard", type=int, default=0, help="which shard (0-based) this job caches")
    s.add_argument("--n-shards", type=int, default=1, help="number of shards the series are split into")
    s.add_argument("--windows", default=json.dumps([{"name": "brain", "level": 40, "width": 80},
                                                    {"name": "subdural", "level": 75, "width": 215},
                                                    {"name": "bone", "level": 600, "width": 2800}]),
                   help="JSON list of windows (name, level, width in HU), one image channel each")
    s.add_argument("--size", type=int, default=128, help="cached slice size in pixels (square)")
    s.add_argument("--gt-dir", help="folder of <SeriesInstanceUID>.npz hemorrhage masks")
    s.add_argument("--boxes", nargs="*", default=[], help="BHX box CSV file(s), rasterised into gt_mask")
    s.add_argument("--non-hu", default="reject", choices=["reject", "accept"],
                   help="a series whose values do not look like CT in HU: reject it, or accept it with a warning")
    s.add_argument("--workers", type=int, default=1, help="worker processes")
    s.add_argument("--store", default="auto", choices=["auto", "always"],
                   help="write the slice store: always, or (auto) where the cohort's selected slices, images and "
                        "masks, exceed --store-budget-gb, so that a fold may not fit in memory")
    s.add_argument("--store-budget-gb", type=float, default=4.0,
                   help="train.memory_budget_gb of the jobs that read this cache (for --store auto)")

    s = command("pack", "pack cache shards' NPZs into memory-mappable slice stores (preprocess, train and score do it "
                "where a fold may not fit in memory)",
                cmd_pack)
    s.add_argument("--cache", nargs="+", required=True, help="cache shard folder(s) written by `preprocess`")

    s = command("bhx-transfer", "move BHX boxes onto the chosen series by patient coordinates", cmd_bhx_transfer)
    s.add_argument("--index", required=True, help="index.csv of `index` (geometry of every series)")
    s.add_argument("--series", required=True, help="series_candidates.csv of `index` (column selected)")
    s.add_argument("--boxes", nargs="+", required=True, help="BHX box CSV file(s)")
    s.add_argument("--out", required=True, help="box file on the chosen slices (BHX format + transfer columns)")
    s.add_argument("--record", required=True, help="CSV: every input box and what became of it")

    s = command("split", "cohort, patient-level fold manifests and Figure 1 cases", cmd_split)
    s.add_argument("--shards", nargs="+", required=True, help="cache shard folders written by `preprocess`")
    s.add_argument("--label-source", default="ctfsh", choices=["ctfsh", "reads", "csv", "masks"],
                   help="ctfsh / csv: --labels file; reads: --reads file; masks: from the cached ground truth")
    s.add_argument("--labels", help="CTFSH cq500_labels.csv (ctfsh) or scan_id,label CSV (csv)")
    s.add_argument("--reads", help="CQ500 reads.csv (label source reads)")
    s.add_argument("--scan-id-format", default="CQ500-CT-{n}",
                   help="how a label file's CT_<n> maps to the DICOM PatientID")
    s.add_argument("--slice-labels", help="optional CSV sop_uid,hemorrhage of slice ground truth")
    s.add_argument("--min-hemorrhage-area-mm2", type=float, default=0.0,
                   help="a slice is anomalous where its full-resolution ground truth covers more (0: any voxel)")
    s.add_argument("--protocol", default="paper", choices=["paper", "slice"],
                   help="paper: every slice of an ICH scan is anomalous; slice: only slices with hemorrhage")
    s.add_argument("--n-folds", type=int, default=5, help="number of patient-level folds")
    s.add_argument("--val-fraction", type=float, default=0.11, help="share of patients per class for validation")
    s.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    s.add_argument("--figure-cases", type=int, default=3, help="number of ICH cases shown in Figure 1")
    s.add_argument("--figure-seed", type=int, default=0, help="seed of the Figure 1 case choice")
    s.add_argument("--out", required=True, help="folder for fold-K.csv and figure_cases.csv")
    s.add_argument("--cohort", required=True, help="output CSV of patients and slices per class")
    s.add_argument("--rejected-in", nargs="*", default=[], help="rejection CSVs of earlier stages to include")
    s.add_argument("--rejected-out", required=True, help="output CSV of everything left out, with the reason")
    s.add_argument("--boxes", nargs="*", default=[], help="BHX box CSV file(s)")
    s.add_argument("--boxes-out", help="CSV of the BHX boxes matched to cached slices")
    s.add_argument("--assignment-in", help="a patient -> fold assignment.csv to reuse (assignment.py)")
    s.add_argument("--assignment-out", help="where to write this run's patient -> fold assignment.csv")
    s.add_argument("--expected", help='JSON of expected patients per class, e.g. {"normal": 117, "pathological": 247}')
    s.add_argument("--expected-action", default="fail", choices=["fail", "warn"],
                   help="what a cohort that differs from --expected does")
    s.add_argument("--scan-key", default="patient", choices=["patient", "study"],
                   help="what a scan is: a patient (PatientID / volume) or a study (StudyInstanceUID)")
    s.add_argument("--patients", help="a dataset adapter's patients.csv (scan_id, patient_id)")
    s.add_argument("--scan-info", help="a dataset adapter's scan_info.csv (scan_id, diagnosis, subtypes, ...)")
    s.add_argument("--excluded", help="a dataset adapter's excluded.csv (scan_id, reason)")

    s = command("datasets", "list the dataset adapters (dataset.name) and what each gives", cmd_datasets)

    s = command("dataset-labels", "derive a dataset adapter's label tables (rule dataset_labels)",
                cmd_dataset_labels)
    s.add_argument("--dataset", required=True, help="JSON of the config's dataset: mapping (name, root, ...)")
    s.add_argument("--index", required=True, help="index.csv of `index`")
    s.add_argument("--out", required=True, help="folder of the derived tables (adapter.DERIVED_FILES)")

    s = command("dataset-files", "write the list of files a dataset adapter's scans are read from (rule dataset_files)",
                cmd_dataset_files)
    s.add_argument("--dataset", required=True, help="JSON of the config's dataset: mapping (name, root, ...)")
    s.add_argument("--out", required=True, help="the text file of paths `index --file-list` reads")
