# evaluation.external: each external set indexed, labelled and cached under results/external/<set>/data/, a
# manifest of all its usable slices (all test slices), one score job per row x fold x set, and their table,
# whose columns join Table 1 (helpers: external_common.smk). Without evaluation.external no rule is defined.


if EXTERNAL:

    wildcard_constraints:
        ext="|".join(re.escape(e) for e in EXT),

    rule external_index:
        input:
            unpack(ext_index_inputs),
        output:
            index="results/external/{ext}/data/index.csv",
            series="results/external/{ext}/data/series_candidates.csv",
            selected="results/external/{ext}/data/series_selected.csv",
            rejected="results/external/{ext}/data/rejected_index.csv",
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
            index="results/external/{ext}/data/index.csv",
            files=lambda wildcards: EXT[wildcards.ext].resolved.label_files,
        output:
            [f"results/external/{{ext}}/data/dataset/{name}" for name in adapters.DERIVED_FILES],
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
            directory("results/external/{ext}/data/cache/shard-{shard}"),
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
            manifest="results/external/{ext}/manifest.csv",
            cohort="results/external/{ext}/cohort.csv",
            rejected="results/external/{ext}/rejected.csv",
            overlap="results/external/{ext}/overlap.csv",
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
                "results/external/{ext}/data/cache/shard-{shard}/rejected.csv", ext=wildcards.ext, shard=SHARDS
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
            test="results/external/{ext}/manifest.csv",
        output:
            scores="results/external/{ext}/scores/{method}/fold-{fold}.csv",
            maps="results/external/{ext}/scores/{method}/fold-{fold}.maps.npz",
            loc="results/external/{ext}/scores/{method}/fold-{fold}.loc.json",
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
            cohorts=expand("results/external/{ext}/cohort.csv", ext=list(EXT)),
        output:
            table="results/external/table1_external.csv",
            markdown="results/external/external.md",
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
