# evaluation.external: each external set indexed, labelled and cached under results/external/<set>/data/, a
# manifest of all its usable slices (all test slices), one score job per row x fold x set, and their table,
# whose columns join Table 1. Without evaluation.external no rule of this file is defined.
from ichbench.datasets import external as external_sets  # noqa: E402

# resolved at parse: a missing download, a repeated label or the training download itself stops here
EXTERNAL = external_sets.resolve_external(config["evaluation"].get("external") or [], config["dataset"])
EXT = {e.label: e for e in EXTERNAL}
EXT_DIR = external_sets.EXTERNAL_DIR


def external_files(kind):
    """Every external score job's output of one kind (scores | loc), all sets x rows x folds."""
    ext = {"scores": "csv", "loc": "loc.json"}[kind]
    return expand(
        EXT_DIR + "/{ext}/scores/{method}/fold-{fold}.{kind}", ext=list(EXT), method=METHODS, fold=FOLDS, kind=ext
    )


def external_table_files():
    """The inputs Table 1 takes from external validation ([] without evaluation.external)."""
    return [f"{EXT_DIR}/table1_external.csv", f"{EXT_DIR}/external.md"] if EXTERNAL else []


def external_benchmarks():
    if not EXTERNAL:
        return []
    steps = ["index", "manifest"] + [f"preprocess/shard-{s}" for s in SHARDS]
    steps += ["labels"] if any(e.resolved.derived for e in EXTERNAL) else []
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
        return f"--nifti-dir {q(input.data)}" + (f" --nifti-masks-dir {q(input.masks)}" if "masks" in input.keys() else "")
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
    inputs = {"shards": expand(d + "/cache/shard-{shard}", shard=SHARDS), "rejected_index": f"{d}/rejected_index.csv"}
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


if EXTERNAL:

    wildcard_constraints:
        ext="|".join(re.escape(e) for e in EXT),

    rule external_index:
        input:
            unpack(ext_index_inputs),
        output:
            index=EXT_DIR + "/{ext}/data/index.csv",
            series=EXT_DIR + "/{ext}/data/series_candidates.csv",
            selected=EXT_DIR + "/{ext}/data/series_selected.csv",
            rejected=EXT_DIR + "/{ext}/data/rejected_index.csv",
        log:
            "logs/external/{ext}/index.log",
        benchmark:
            "benchmarks/external/{ext}/index.tsv"
        conda:
            CONDA_ENV
        threads: 4
        resources:
            mem_mb=4000,
            runtime=120,
        params:
            out=output_dir,
            source=ext_index_args,
            min_slices=config["preprocess"]["min_slices"],
            min_extent=config["preprocess"]["min_extent_mm"],
        shell:
            "ichbench index {params.source} --out {params.out} "
            "--min-slices {params.min_slices} --min-extent-mm {params.min_extent} --workers {threads} > {log} 2>&1"

    rule external_labels:
        input:
            index=EXT_DIR + "/{ext}/data/index.csv",
            files=lambda wildcards: EXT[wildcards.ext].resolved.label_files,
        output:
            [EXT_DIR + "/{ext}/data/dataset/" + name for name in adapters.DERIVED_FILES],
        log:
            "logs/external/{ext}/labels.log",
        benchmark:
            "benchmarks/external/{ext}/labels.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=8000,
            runtime=30,
        params:
            dataset=lambda wildcards: shlex.quote(json.dumps(EXT[wildcards.ext].entry, sort_keys=True)),
            out=lambda wildcards: EXT[wildcards.ext].derived_dir,
        shell:
            "ichbench dataset-labels --dataset {params.dataset} --index {input.index} --out {params.out} > {log} 2>&1"

    rule external_preprocess:
        input:
            unpack(ext_preprocess_inputs),
        output:
            directory(EXT_DIR + "/{ext}/data/cache/shard-{shard}"),
        log:
            "logs/external/{ext}/preprocess/shard-{shard}.log",
        benchmark:
            "benchmarks/external/{ext}/preprocess/shard-{shard}.tsv"
        conda:
            CONDA_ENV
        threads: 4
        resources:
            mem_mb=8000,
            runtime=240,
        params:
            data=data_dir,
            n_shards=len(SHARDS),
            windows=windows_json(),
            size=config["preprocess"]["image_size"],
            gt=lambda wildcards: ext_gt_dir(wildcards.ext),
            non_hu=config["preprocess"].get("non_hu", "reject"),
        shell:
            "ichbench preprocess --data {params.data} --out {output} --shard {wildcards.shard} "
            "--n-shards {params.n_shards} --windows '{params.windows}' --size {params.size} "
            "--gt-dir '{params.gt}' --non-hu {params.non_hu} --workers {threads} > {log} 2>&1"

    rule external_manifest:
        input:
            unpack(ext_manifest_inputs),
        output:
            manifest=EXT_DIR + "/{ext}/manifest.csv",
            cohort=EXT_DIR + "/{ext}/cohort.csv",
            rejected=EXT_DIR + "/{ext}/rejected.csv",
            overlap=EXT_DIR + "/{ext}/overlap.csv",
        log:
            "logs/external/{ext}/manifest.log",
        benchmark:
            "benchmarks/external/{ext}/manifest.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            args=ext_manifest_args,
            protocol=config["protocol"],
            min_area=lambda wildcards: EXT[wildcards.ext].dataset.get("min_hemorrhage_area_mm2", 0),
            training_name=adapters.name_of(config["dataset"]),
            shard_rejected=lambda wildcards: expand(
                EXT_DIR + "/{ext}/data/cache/shard-{shard}/rejected.csv", ext=wildcards.ext, shard=SHARDS
            ),
        shell:
            "ichbench external-manifest --shards {input.shards} {params.args} --protocol {params.protocol} "
            "--min-hemorrhage-area-mm2 {params.min_area} --training-manifests {input.training} "
            "--training-name {params.training_name} --rejected-in {input.rejected_index} {params.shard_rejected} "
            "--out {output.manifest} --cohort {output.cohort} --rejected-out {output.rejected} "
            "--overlap {output.overlap} > {log} 2>&1"

    rule external_score:
        input:
            unpack(method_files),
            model="results/models/{method}/fold-{fold}/model.pt",
            manifest="results/splits/fold-{fold}.csv",
            test=EXT_DIR + "/{ext}/manifest.csv",
        output:
            scores=EXT_DIR + "/{ext}/scores/{method}/fold-{fold}.csv",
            maps=EXT_DIR + "/{ext}/scores/{method}/fold-{fold}.maps.npz",
            loc=EXT_DIR + "/{ext}/scores/{method}/fold-{fold}.loc.json",
        log:
            "logs/external/{ext}/score/{method}/fold-{fold}.log",
        benchmark:
            "benchmarks/external/{ext}/score/{method}/fold-{fold}.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            gpu=GPUS,
            mem_mb=train_mem_mb,
            runtime=60,
        params:
            files=method_files_state,
            device=config["train"]["device"],
            batch_size=config["train"]["score_batch_size"],
            negative_rate=config["evaluation"]["pixel_negative_rate"],
            pixel_specificity=config["evaluation"]["pixel_specificity"],
            loc_seed=config["evaluation"]["seed"],
            data=data_access,
        shell:
            "ichbench score --model {input.model} --manifest {input.manifest} --test-manifest {input.test} "
            "--out-csv {output.scores} --out-maps {output.maps} --out-loc {output.loc} "
            "--device {params.device} --batch-size {params.batch_size} --threads {threads} "
            "--pixel-negative-rate {params.negative_rate} --loc-seed {params.loc_seed} "
            "--pixel-specificity {params.pixel_specificity} {params.data} > {log} 2>&1"

    rule external_table:
        input:
            scores=external_files("scores"),
            loc=external_files("loc"),
            cohorts=expand(EXT_DIR + "/{ext}/cohort.csv", ext=list(EXT)),
        output:
            table=EXT_DIR + "/table1_external.csv",
            markdown=EXT_DIR + "/external.md",
        log:
            "logs/external/table.log",
        benchmark:
            "benchmarks/external/table.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            sets=json.dumps([{"label": e.label, "dataset": e.name} for e in EXTERNAL]),
            methods=json.dumps(METHODS),
            protocol=config["protocol"],
            ddof=config["table"]["std_ddof"],
            bootstrap=config["table"]["bootstrap"],
            seed=config["table"]["seed"],
            scan_aggregation=config["table"]["scan_aggregation"],
            scan_top_k=config["table"]["scan_top_k"],
        shell:
            "ichbench external-table --scores {input.scores} --loc {input.loc} --cohorts {input.cohorts} "
            "--sets '{params.sets}' --methods '{params.methods}' --protocol {params.protocol} --ddof {params.ddof} "
            "--bootstrap {params.bootstrap} --seed {params.seed} --scan-aggregation {params.scan_aggregation} "
            "--scan-top-k {params.scan_top_k} --out {output.table} --out-md {output.markdown} > {log} 2>&1"
