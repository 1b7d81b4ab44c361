# Raw DICOM (or NIfTI) -> header index + series choice -> cached windowed NPZ per series (sharded).


if SYNTHETIC:

    rule synthesize:
        output:
            dicom=directory(os.path.join(config["synthetic"]["out_dir"], "dicom")),
            labels=os.path.join(config["synthetic"]["out_dir"], "cq500_labels.csv"),
            reads=os.path.join(config["synthetic"]["out_dir"], "reads.csv"),
            slice_labels=os.path.join(config["synthetic"]["out_dir"], "slice_labels.csv"),
            masks=directory(os.path.join(config["synthetic"]["out_dir"], "masks")),
        params:
            out_dir=output_dir,
            synthetic=synthetic_params(),
        conda:
            CONDA_ENV
        log:
            "logs/data/synthesize.log",
        benchmark:
            "benchmarks/data/synthesize.tsv"
        threads: 2
        resources:
            mem_mb=2000,
            runtime=30,
        shell:
            "ichbench synth --out {params.out_dir} --params '{params.synthetic}' "
            "--workers {threads} > {log} 2>&1"


rule index_dicom:
    input:
        unpack(index_inputs),
    output:
        index="results/data/index.csv",
        series="results/data/series_candidates.csv",
        selected="results/data/series_selected.csv",
        rejected="results/data/rejected_index.csv",
    params:
        out=output_dir,
        source=index_args,
        min_slices=config["preprocess"]["min_slices"],
        min_extent=config["preprocess"]["min_extent_mm"],
    conda:
        CONDA_ENV
    log:
        "logs/data/index.log",
    benchmark:
        "benchmarks/data/index.tsv"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        "ichbench index {params.source} --out {params.out} "
        "--min-slices {params.min_slices} --min-extent-mm {params.min_extent} --workers {threads} > {log} 2>&1"


rule preprocess:
    input:
        unpack(preprocess_inputs),
    output:
        directory("results/data/cache/shard-{shard}"),
    params:
        data=data_dir,
        n_shards=len(SHARDS),
        windows=windows_json(),
        size=config["preprocess"]["image_size"],
        gt=gt_masks_dir(),
        boxes=bhx_args,
    conda:
        CONDA_ENV
    log:
        "logs/data/preprocess/shard-{shard}.log",
    benchmark:
        "benchmarks/data/preprocess/shard-{shard}.tsv"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "ichbench preprocess --data {params.data} --out {output} --shard {wildcards.shard} "
        "--n-shards {params.n_shards} --windows '{params.windows}' --size {params.size} "
        "--gt-dir '{params.gt}' --boxes {params.boxes} --workers {threads} > {log} 2>&1"
