# Per method x fold: slice scores of validation and test, and the maps of the Figure 1 cases.


rule score:
    input:
        model="results/models/{method}/fold-{fold}/model.pt",
        manifest="results/splits/fold-{fold}.csv",
        figure_cases="results/splits/figure_cases.csv",
    output:
        scores="results/scores/{method}/fold-{fold}.csv",
        maps="results/scores/{method}/fold-{fold}.maps.npz",
    params:
        device=config["train"]["device"],
        batch_size=config["train"]["score_batch_size"],
    conda:
        CONDA_ENV
    log:
        "logs/score/{method}/fold-{fold}.log",
    benchmark:
        "benchmarks/score/{method}/fold-{fold}.tsv"
    threads: 1
    resources:
        gpu=GPUS,
        mem_mb=8000,
        runtime=60,
    shell:
        "ichbench score --model {input.model} --manifest {input.manifest} "
        "--figure-cases {input.figure_cases} --out-csv {output.scores} --out-maps {output.maps} "
        "--device {params.device} --batch-size {params.batch_size} --threads {threads} > {log} 2>&1"
