# Raw DICOM (or NIfTI) -> header index + series choice -> cached windowed NPZ per series (sharded).


if SYNTHETIC:

    rule synthesize:
        output:
            dicom=directory(os.path.join(config["synthetic"]["out_dir"], "dicom")),
            labels=os.path.join(config["synthetic"]["out_dir"], "cq500_labels.csv"),
            reads=os.path.join(config["synthetic"]["out_dir"], "reads.csv"),
            slice_labels=os.path.join(config["synthetic"]["out_dir"], "slice_labels.csv"),
            masks=directory(os.path.join(config["synthetic"]["out_dir"], "masks")),
        log:
            "logs/data/synthesize.log",
        benchmark:
            "benchmarks/data/synthesize.tsv"
        conda:
            CONDA_ENV
        threads: 2
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            out_dir=output_dir,
            synthetic=synthetic_params(),
        shell:
            "ichbench synth --out {params.out_dir} --params '{params.synthetic}' " "--workers {threads} > {log} 2>&1"


if INDEX_FILES:

    rule dataset_files:
        input:
            RESOLVED.index_inputs,
        output:
            INDEX_FILES,
        log:
            "logs/data/dataset_files.log",
        benchmark:
            "benchmarks/data/dataset_files.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            dataset=lambda wildcards: shlex.quote(dataset_json()),
        shell:
            "ichbench dataset-files --dataset {params.dataset} --out {output} > {log} 2>&1"


rule index_dicom:
    input:
        unpack(index_inputs),
    output:
        index="results/data/index.csv",
        series="results/data/series_candidates.csv",
        selected="results/data/series_selected.csv",
        rejected="results/data/rejected_index.csv",
    log:
        "logs/data/index.log",
    benchmark:
        "benchmarks/data/index.tsv"
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        out=output_dir,
        source=index_args,
        min_slices=config["preprocess"]["min_slices"],
        min_extent=config["preprocess"]["min_extent_mm"],
    shell:
        "ichbench index {params.source} --out {params.out} "
        "--min-slices {params.min_slices} --min-extent-mm {params.min_extent} --workers {threads} > {log} 2>&1"


rule preprocess:
    input:
        unpack(preprocess_inputs),
    output:
        directory("results/data/cache/shard-{shard}"),
    log:
        "logs/data/preprocess/shard-{shard}.log",
    benchmark:
        "benchmarks/data/preprocess/shard-{shard}.tsv"
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
        gt=gt_masks_dir(),
        boxes=bhx_args,
        non_hu=config["preprocess"].get("non_hu", "reject"),
    shell:
        "ichbench preprocess --data {params.data} --out {output} --shard {wildcards.shard} "
        "--n-shards {params.n_shards} --windows '{params.windows}' --size {params.size} "
        "--gt-dir '{params.gt}' --boxes {params.boxes} --non-hu {params.non_hu} --workers {threads} > {log} 2>&1"


if bhx_files() and DATASET.get("bhx_transfer", True):

    rule bhx_transfer:
        input:
            index="results/data/index.csv",
            series="results/data/series_candidates.csv",
            boxes=bhx_files(),
        output:
            boxes="results/data/bhx_boxes.csv",
            record="results/data/bhx_transfer.csv",
        log:
            "logs/data/bhx_transfer.log",
        benchmark:
            "benchmarks/data/bhx_transfer.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            boxes=lambda wildcards, input: " ".join(shlex.quote(p) for p in input.boxes),
        shell:
            "ichbench bhx-transfer --index {input.index} --series {input.series} --boxes {params.boxes} "
            "--out {output.boxes} --record {output.record} > {log} 2>&1"


if DERIVED:

    rule dataset_labels:
        input:
            index="results/data/index.csv",
            files=RESOLVED.label_files,
        output:
            [derived(name) for name in adapters.DERIVED_FILES]
            + ([directory(derived("masks"))] if DATASET.get("gt_masks_dir") else []),
        log:
            "logs/data/dataset_labels.log",
        benchmark:
            "benchmarks/data/dataset_labels.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=8000,
            runtime=30,
        params:
            dataset=lambda wildcards: shlex.quote(dataset_json()),
            out=adapters.DERIVED_DIR,
        shell:
            "ichbench dataset-labels --dataset {params.dataset} --index {input.index} --out {params.out} > {log} 2>&1"
