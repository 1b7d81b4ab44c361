# Per method x fold: slice scores of validation and test, the maps of the Figure 1 cases and of the fold's worst misses.


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
        errors="results/scores/{method}/fold-{fold}.errors.npz",
    log:
        "logs/score/{method}/fold-{fold}.log",
    benchmark:
        "benchmarks/score/{method}/fold-{fold}.tsv"
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
        error_cases=config["evaluation"]["error_cases"],
        data=data_access,
    shell:
        "ichbench score --model {input.model} --manifest {input.manifest} "
        "--figure-cases {input.figure_cases} --out-csv {output.scores} --out-maps {output.maps} "
        "--device {params.device} --batch-size {params.batch_size} --threads {threads} "
        "--out-loc {output.loc} --pixel-negative-rate {params.negative_rate} --loc-seed {params.loc_seed} "
        "--out-errors {output.errors} --error-cases {params.error_cases} "
        "--pixel-specificity {params.pixel_specificity} {params.data} > {log} 2>&1"
