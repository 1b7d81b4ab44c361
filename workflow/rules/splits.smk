# Cached slices + labels -> cohort, patient-level fold manifests, Figure 1 cases, rejected inputs.


rule split:
    input:
        unpack(label_inputs),
        shards=expand("results/data/cache/shard-{shard}", shard=SHARDS),
        rejected_index="results/data/rejected_index.csv",
    output:
        manifests=expand("results/splits/fold-{fold}.csv", fold=FOLDS),
        figure_cases="results/splits/figure_cases.csv",
        cohort="results/data/cohort.csv",
        rejected="results/data/rejected.csv",
        boxes="results/data/boxes.csv",
        assignment="results/splits/assignment.csv",
    log:
        "logs/splits/split.log",
    benchmark:
        "benchmarks/splits/split.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        out=output_dir,
        label_source=label_source(),
        labels=label_file(),
        reads="" if NIFTI else (DATASET.get("reads") or ""),
        scan_id_format=scan_id_format,
        protocol=config["protocol"],
        n_folds=config["splits"]["n_folds"],
        val_fraction=config["splits"]["val_fraction"],
        seed=config["splits"]["seed"],
        figure_cases=config["figure"]["n_cases"],
        figure_seed=config["figure"]["seed"],
        slice_labels=slice_labels_file(),
        min_area=DATASET.get("min_hemorrhage_area_mm2", 0),
        bhx=bhx_args,
        assignment=assignment_args,
        expected=expected_args,
        dataset=dataset_args,
        shard_rejected=expand("results/data/cache/shard-{shard}/rejected.csv", shard=SHARDS),
    shell:
        "ichbench split --shards {input.shards} --label-source {params.label_source} "
        "--labels '{params.labels}' --reads '{params.reads}' --scan-id-format '{params.scan_id_format}' "
        "--slice-labels '{params.slice_labels}' --min-hemorrhage-area-mm2 {params.min_area} --protocol {params.protocol} --n-folds {params.n_folds} "
        "--val-fraction {params.val_fraction} --seed {params.seed} --figure-cases {params.figure_cases} "
        "--figure-seed {params.figure_seed} --out {params.out} --cohort {output.cohort} "
        "--rejected-in {input.rejected_index} {params.shard_rejected} "
        "--rejected-out {output.rejected} --boxes {params.bhx} --boxes-out {output.boxes} "
        "--assignment-out {output.assignment} {params.assignment} {params.expected} {params.dataset} > {log} 2>&1"
