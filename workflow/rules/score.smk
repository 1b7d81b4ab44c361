# Per method x fold: slice scores of validation and test, and the maps of the Figure 1 cases.


rule score:
    input:
        unpack(method_files),
        model="results/models/{method}/fold-{fold}/model.pt",
        manifest="results/splits/fold-{fold}.csv",
        figure_cases="results/splits/figure_cases.csv",
    output:
        scores="results/scores/{method}/fold-{fold}.csv",
        maps="results/scores/{method}/fold-{fold}.maps.npz",
        loc="results/scores/{method}/fold-{fold}.loc.json",
    log:
        "logs/score/{method}/fold-{fold}.log",
    benchmark:
        "benchmarks/score/{method}/fold-{fold}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=GPUS,
        mem_mb=8000,
        runtime=60,
    params:
        files=method_files_state,
        device=config["train"]["device"],
        batch_size=config["train"]["score_batch_size"],
        negative_rate=config["evaluation"]["pixel_negative_rate"],
        loc_seed=config["evaluation"]["seed"],
    shell:
        "ichbench score --model {input.model} --manifest {input.manifest} "
        "--figure-cases {input.figure_cases} --out-csv {output.scores} --out-maps {output.maps} "
        "--device {params.device} --batch-size {params.batch_size} --threads {threads} "
        "--out-loc {output.loc} --pixel-negative-rate {params.negative_rate} --loc-seed {params.loc_seed} > {log} 2>&1"
