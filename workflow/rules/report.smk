# Scores -> Table 1 (CSV, per-fold long CSV, Markdown), the confound table and Figure 1; every job's runtime -> one table.


rule table1:
    input:
        scores=score_files("scores"),
        maps=score_files("maps"),
        cohort="results/data/cohort.csv",
        strata="results/strata.md",
        external=external_table_files(),
    output:
        table=report("results/table1.csv", caption="../report/table1.rst", category="Table 1"),
        per_fold="results/table1_per_fold.csv",
        markdown=report("results/table1.md", caption="../report/table1_md.rst", category="Table 1"),
        ci=report("results/table1_ci.csv", caption="../report/table1_ci.rst", category="Table 1"),
        comparisons=report("results/comparisons.csv", caption="../report/comparisons.rst", category="Table 1"),
        operating=report("results/operating_points.csv", caption="../report/operating_points.rst", category="Table 1"),
        operating_folds="results/operating_points_per_fold.csv",
    log:
        "logs/report/table1.log",
    benchmark:
        "benchmarks/report/table1.tsv"
    conda:
        CONDA_ENV
    threads: config["table"]["threads"]
    resources:
        mem_mb=report_mem_mb(4000, 6),
        runtime=30,
    params:
        methods=json.dumps(METHODS),
        protocol=config["protocol"],
        n_folds=len(FOLDS),
        dataset=config["dataset"]["source"],
        ddof=config["table"]["std_ddof"],
        label_source=label_source(),
        bootstrap=config["table"]["bootstrap"],
        seed=config["table"]["seed"],
        scan_aggregation=config["table"]["scan_aggregation"],
        scan_top_k=config["table"]["scan_top_k"],
        compare=table_extra_args,
        targets=" ".join(str(q) for q in config["evaluation"]["target_specificity"]),
    shell:
        "ichbench table --scores {input.scores} --maps {input.maps} --methods '{params.methods}' "
        "--protocol {params.protocol} --n-folds {params.n_folds} --dataset {params.dataset} "
        "--ddof {params.ddof} --out {output.table} --out-long {output.per_fold} --out-md {output.markdown} "
        "--out-ci {output.ci} --out-comparisons {output.comparisons} --cohort {input.cohort} "
        "--label-source {params.label_source} --bootstrap {params.bootstrap} --seed {params.seed} "
        "--scan-aggregation {params.scan_aggregation} --scan-top-k {params.scan_top_k} --threads {threads} "
        "--out-operating {output.operating} --out-operating-folds {output.operating_folds} "
        "--target-specificity {params.targets} --include-md {input.strata} {params.compare} > {log} 2>&1"


rule stats_figures:
    input:
        scores=score_files("scores"),
        ci="results/table1_ci.csv",
    output:
        forest=report("results/figures/forest_auc.png", caption="../report/forest_auc.rst", category="Table 1"),
        roc=report("results/figures/roc_curves.png", caption="../report/roc_curves.rst", category="Table 1"),
    log:
        "logs/report/stats_figures.log",
    benchmark:
        "benchmarks/report/stats_figures.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=report_mem_mb(2000, 3.5),
        runtime=10,
    params:
        methods=json.dumps(METHODS),
    shell:
        "ichbench stats-figures --scores {input.scores} --ci {input.ci} --methods '{params.methods}' "
        "--out-forest {output.forest} --out-roc {output.roc} > {log} 2>&1"


rule extra_tables:
    input:
        scores=score_files("scores"),
        loc=score_files("loc"),
        manifests=expand("results/splits/fold-{fold}.csv", fold=FOLDS),
    output:
        loc=report("results/localisation.csv", caption="../report/extra_tables.rst", category="Extra tables"),
        brain="results/table_brain.csv",
        subtypes="results/table_subtypes.csv",
        markdown="results/tables_extra.md",
    log:
        "logs/report/extra_tables.log",
    benchmark:
        "benchmarks/report/extra_tables.tsv"
    # a few seconds of pandas: runs where Snakemake runs (on a cluster, the login node), like `runtimes`
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=report_mem_mb(2000, 3.5),
        runtime=10,
    params:
        methods=json.dumps(METHODS),
        protocol=config["protocol"],
        ddof=config["table"]["std_ddof"],
    shell:
        "ichbench extra-tables --scores {input.scores} --loc {input.loc} --manifests {input.manifests} "
        "--methods '{params.methods}' --protocol {params.protocol} --ddof {params.ddof} "
        "--out-loc {output.loc} --out-brain {output.brain} --out-subtypes {output.subtypes} "
        "--out-md {output.markdown} > {log} 2>&1"


rule confounds:
    input:
        manifests=expand("results/splits/fold-{fold}.csv", fold=FOLDS),
        table1="results/table1.csv",
    output:
        table=report("results/confounds.csv", caption="../report/confounds.rst", category="Table 1"),
        markdown="results/confounds.md",
    log:
        "logs/report/confounds.log",
    benchmark:
        "benchmarks/report/confounds.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "ichbench confounds --manifests {input.manifests} --table1 {input.table1} --out {output.table} "
        "--out-md {output.markdown} > {log} 2>&1"


rule figure1:
    input:
        maps=score_files("maps"),
        cases="results/splits/figure_cases.csv",
    output:
        report("results/figure1.png", caption="../report/figure1.rst", category="Figure 1"),
    log:
        "logs/report/figure1.log",
    benchmark:
        "benchmarks/report/figure1.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        methods=json.dumps(METHODS),
        percentile=config["figure"]["percentile"],
    shell:
        "ichbench figure --maps {input.maps} --cases {input.cases} --methods '{params.methods}' "
        "--percentile {params.percentile} --out {output} > {log} 2>&1"


rule synthetic_anomalies:
    input:
        manifest="results/splits/fold-0.csv",
    output:
        report(
            "results/figures/synthetic_anomalies.png",
            caption="../report/synthetic_anomalies.rst",
            category="Synthetic anomalies",
        ),
    log:
        "logs/report/synthetic_anomalies.log",
    benchmark:
        "benchmarks/report/synthetic_anomalies.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        seed=config["train"]["seed"],
    shell:
        "ichbench anomaly-figure --manifest {input.manifest} --seed {params.seed} --out {output} > {log} 2>&1"


rule runtimes:
    input:
        (["benchmarks/data/synthesize.tsv"] if SYNTHETIC else [])
        + ["benchmarks/data/index.tsv", "benchmarks/splits/split.tsv"]
        + expand("benchmarks/data/preprocess/shard-{shard}.tsv", shard=SHARDS)
        + expand("benchmarks/{step}/{method}/fold-{fold}.tsv", step=["train", "score"], method=METHODS, fold=FOLDS)
        + ["benchmarks/report/confounds.tsv"]
        + ["benchmarks/report/table1.tsv", "benchmarks/report/figure1.tsv", "benchmarks/report/stats_figures.tsv"]
        + ["benchmarks/report/strata.tsv", "benchmarks/report/errors.tsv"]
        + external_benchmarks(),
    output:
        report("results/runtimes.csv", caption="../report/runtimes.rst", category="Runtimes"),
    log:
        "logs/report/runtimes.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../report/runtimes.py"


rule errors:
    input:
        scores=score_files("scores"),
        errors=score_files("errors"),
        manifests=expand("results/splits/fold-{fold}.csv", fold=FOLDS),
    output:
        tables=expand("results/errors/{method}.csv", method=METHODS),
        figures=expand("results/errors/{method}.png", method=METHODS),
    log:
        "logs/report/errors.log",
    benchmark:
        "benchmarks/report/errors.tsv"
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        methods=json.dumps(METHODS),
        n=config["evaluation"]["error_cases"],
    shell:
        "ichbench errors --scores {input.scores} --errors-npz {input.errors} --manifests {input.manifests} "
        "--methods '{params.methods}' --out-dir results/errors --n {params.n} > {log} 2>&1"


rule strata:
    input:
        scores=score_files("scores"),
        manifests=expand("results/splits/fold-{fold}.csv", fold=FOLDS),
        shards=expand("results/data/cache/shard-{shard}", shard=SHARDS),
        series=["results/data/series_selected.csv", "results/data/index.csv"],
    output:
        table=report("results/strata.csv", caption="../report/strata.rst", category="Strata"),
        markdown="results/strata.md",
        figure=report(
            "results/figures/sensitivity_by_size.png", caption="../report/sensitivity_by_size.rst", category="Strata"
        ),
    log:
        "logs/report/strata.log",
    benchmark:
        "benchmarks/report/strata.tsv"
    conda:
        CONDA_ENV
    threads: config["table"]["threads"]
    resources:
        mem_mb=report_mem_mb(4000, 4),
        runtime=30,
    params:
        methods=json.dumps(METHODS),
        targets=" ".join(str(q) for q in config["evaluation"]["target_specificity"]),
        size_bins=" ".join(str(b) for b in config["evaluation"]["size_bins_mm2"]),
        volume_bins=" ".join(str(b) for b in config["evaluation"]["volume_bins_ml"]),
        min_units=config["evaluation"]["min_units"],
        bootstrap=config["table"]["bootstrap"],
        seed=config["table"]["seed"],
        scan_aggregation=config["table"]["scan_aggregation"],
        scan_top_k=config["table"]["scan_top_k"],
    shell:
        "ichbench strata --scores {input.scores} --manifests {input.manifests} --series {input.series} "
        "--methods '{params.methods}' --target-specificity {params.targets} --size-bins {params.size_bins} "
        "--volume-bins {params.volume_bins} --min-units {params.min_units} --bootstrap {params.bootstrap} "
        "--seed {params.seed} --scan-aggregation {params.scan_aggregation} --scan-top-k {params.scan_top_k} "
        "--threads {threads} --out {output.table} --out-md {output.markdown} --out-figure {output.figure} > {log} 2>&1"


rule bundle:
    input:
        table="results/table1.csv",
        ci="results/table1_ci.csv",
        per_fold="results/table1_per_fold.csv",
        models=expand("results/models/{method}/fold-{fold}/model.pt", method=METHODS, fold=FOLDS),
        assignment="results/splits/assignment.csv",
        cohort="results/data/cohort.csv",
    output:
        report("results/ichbench-results.json", caption="../report/bundle.rst", category="Table 1"),
    log:
        "logs/report/bundle.log",
    # a second of JSON: runs where Snakemake runs, like `runtimes`
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        runs=model_runs(),
        settings=bundle_settings,
    shell:
        "ichbench bundle --table {input.table} --ci {input.ci} --per-fold {input.per_fold} --runs {params.runs} "
        "--assignment {input.assignment} --cohort {input.cohort} --settings '{params.settings}' "
        "--out {output} > {log} 2>&1"
