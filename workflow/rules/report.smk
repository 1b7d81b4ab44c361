# Scores -> Table 1 (CSV, per-fold long CSV, Markdown) and Figure 1; every job's runtime -> one table.


rule table1:
    input:
        scores=score_files("scores"),
        maps=score_files("maps"),
    output:
        table=report("results/table1.csv", caption="../report/table1.rst", category="Table 1"),
        per_fold="results/table1_per_fold.csv",
        markdown="results/table1.md",
    params:
        methods=json.dumps(METHODS),
        protocol=config["protocol"],
        n_folds=len(FOLDS),
        dataset=config["dataset"]["source"],
        ddof=config["table"]["std_ddof"],
    conda:
        CONDA_ENV
    log:
        "logs/report/table1.log",
    benchmark:
        "benchmarks/report/table1.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "ichbench table --scores {input.scores} --maps {input.maps} --methods '{params.methods}' "
        "--protocol {params.protocol} --n-folds {params.n_folds} --dataset {params.dataset} "
        "--ddof {params.ddof} --out {output.table} --out-long {output.per_fold} --out-md {output.markdown} "
        "> {log} 2>&1"


rule figure1:
    input:
        maps=score_files("maps"),
        cases="results/splits/figure_cases.csv",
    output:
        report("results/figure1.png", caption="../report/figure1.rst", category="Figure 1"),
    params:
        methods=json.dumps(METHODS),
        percentile=config["figure"]["percentile"],
    conda:
        CONDA_ENV
    log:
        "logs/report/figure1.log",
    benchmark:
        "benchmarks/report/figure1.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
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
    params:
        seed=config["train"]["seed"],
    conda:
        CONDA_ENV
    log:
        "logs/report/synthetic_anomalies.log",
    benchmark:
        "benchmarks/report/synthetic_anomalies.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "ichbench anomaly-figure --manifest {input.manifest} --seed {params.seed} --out {output} > {log} 2>&1"


rule runtimes:
    input:
        (["benchmarks/data/synthesize.tsv"] if SYNTHETIC else [])
        + ["benchmarks/data/index.tsv", "benchmarks/splits/split.tsv"]
        + expand("benchmarks/data/preprocess/shard-{shard}.tsv", shard=SHARDS)
        + expand("benchmarks/{step}/{method}/fold-{fold}.tsv", step=["train", "score"], method=METHODS, fold=FOLDS)
        + ["benchmarks/report/table1.tsv", "benchmarks/report/figure1.tsv"],
    output:
        report("results/runtimes.csv", caption="../report/runtimes.rst", category="Runtimes"),
    localrule: True
    conda:
        CONDA_ENV
    log:
        "logs/report/runtimes.log",
    script:
        "../report/runtimes.py"
