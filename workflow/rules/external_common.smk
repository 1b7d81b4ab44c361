# Helpers of external validation (evaluation.external; the rules are in external.smk): the resolved sets,
# their input functions and the arguments Table 1 and the runtimes take from them ([] / '' without sets).
from ichbench.datasets import external as external_sets  # noqa: E402

# resolved at parse: a missing download, a repeated label or the training download itself stops here
EXTERNAL = external_sets.resolve_external(config["evaluation"].get("external") or [], config["dataset"])
EXT = {e.label: e for e in EXTERNAL}
EXT_DIR = external_sets.EXTERNAL_DIR


def external_files(kind):
    """Every external score job's output of one kind (scores | loc), all sets x rows x folds."""
    ext = {"scores": "csv", "loc": "loc.json"}[kind]
    return expand(
        "results/external/{ext}/scores/{method}/fold-{fold}.{kind}", ext=list(EXT), method=METHODS, fold=FOLDS, kind=ext
    )


def external_table_files():
    """The inputs Table 1 takes from external validation ([] without evaluation.external)."""
    return [f"{EXT_DIR}/table1_external.csv", f"{EXT_DIR}/external.md"] if EXTERNAL else []


def external_benchmarks():
    if not EXTERNAL:
        return []
    steps = ["index", "labels", "manifest"] + [f"preprocess/shard-{s}" for s in SHARDS]
    out = [f"benchmarks/external/{e}/{s}.tsv" for e in EXT for s in steps if s != "labels" or EXT[e].resolved.derived]
    out += expand("benchmarks/external/{ext}/score/{method}/fold-{fold}.tsv", ext=list(EXT), method=METHODS, fold=FOLDS)
    return out + ["benchmarks/external/table.tsv"]


def table_extra_args(wildcards):
    """table.compare and, with external sets, their table (columns of Table 1) and section (table1.md)."""
    args = f"--compare {shlex.quote(config['table']['compare'])}" if config["table"].get("compare") else ""
    if EXTERNAL:
        args += f" --external {EXT_DIR}/table1_external.csv --include-md {EXT_DIR}/external.md"
    return args


def ext_derived(ext, name):
    return f"{EXT[ext].derived_dir}/{name}"


def ext_index_inputs(wildcards):
    ds = EXT[wildcards.ext].dataset
    if ds["source"] == "nifti":
        return {"data": ds["nifti_dir"], **({"masks": ds["nifti_masks_dir"]} if ds.get("nifti_masks_dir") else {})}
    return {"data": ds["dicom_dir"]}


def ext_index_args(wildcards, input):
    """`ichbench index` arguments of an external set (the training data's series-selection settings)."""
    q, ext = shlex.quote, EXT[wildcards.ext]
    if ext.dataset["source"] == "nifti":
        return f"--nifti-dir {q(input.data)}" + (
            f" --nifti-masks-dir {q(input.masks)}" if "masks" in input.keys() else ""
        )
    pre = config["preprocess"]
    args = f"--dicom-dir {q(input.data)} --axial-tolerance-deg {pre.get('axial_tolerance_deg', 30.0)}"
    if pre.get("bone_patterns"):
        args += f" --bone-patterns {q(json.dumps(list(pre['bone_patterns'])))}"
    if ext.resolved.scan_key != "patient":
        args += f" --scan-key {ext.resolved.scan_key}"
    return args


def ext_gt_dir(ext):
    ds = EXT[ext].dataset
    return "" if ds["source"] == "nifti" else (ds.get("gt_masks_dir") or "")


def ext_preprocess_inputs(wildcards):
    d = f"{EXT_DIR}/{wildcards.ext}/data"
    inputs = {"index": f"{d}/index.csv", "series": f"{d}/series_candidates.csv"}
    ext = EXT[wildcards.ext]
    if ext_gt_dir(wildcards.ext):
        if ext.resolved.derived:  # masks written by the set's dataset_labels job
            inputs["labels"] = ext_derived(wildcards.ext, "scan_labels.csv")
        elif os.path.isdir(ext_gt_dir(wildcards.ext)):
            inputs["gt"] = ext_gt_dir(wildcards.ext)
    return inputs


def ext_manifest_inputs(wildcards):
    ext, d = EXT[wildcards.ext], f"{EXT_DIR}/{wildcards.ext}/data"
    inputs = {"shards": expand(f"{d}/cache/shard-{{shard}}", shard=SHARDS), "rejected_index": f"{d}/rejected_index.csv"}
    inputs["training"] = expand("results/splits/fold-{fold}.csv", fold=FOLDS)
    if ext.resolved.derived:
        inputs.update({n.removesuffix(".csv"): ext_derived(wildcards.ext, n) for n in adapters.DERIVED_FILES})
    else:
        for key in ("labels", "reads", "slice_labels", "nifti_labels"):
            if ext.dataset.get(key) and os.path.exists(ext.dataset[key]):
                inputs[key] = ext.dataset[key]
    return inputs


def ext_manifest_args(wildcards):
    ext = EXT[wildcards.ext]
    args = f"--label {ext.label} --label-source {ext.label_source} --scan-key {ext.resolved.scan_key}"
    if ext.resolved.derived:
        tables = {"patients": "patients.csv", "scan-info": "scan_info.csv", "excluded": "excluded.csv"}
        args += "".join(f" --{o} {ext_derived(wildcards.ext, n)}" for o, n in tables.items())
    return args + f" --dataset {shlex.quote(json.dumps(ext.dataset, sort_keys=True))}"
