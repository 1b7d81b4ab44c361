# One training job per method x fold (GPU-tagged for clusters).


rule train:
    input:
        unpack(method_files),
        manifest="results/splits/fold-{fold}.csv",
    output:
        model="results/models/{method}/fold-{fold}/model.pt",
        history="results/models/{method}/fold-{fold}/history.csv",
    log:
        "logs/train/{method}/fold-{fold}.log",
    benchmark:
        "benchmarks/train/{method}/fold-{fold}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=GPUS,
        mem_mb=train_mem_mb,
        runtime=720,
    params:
        files=method_files_state,
        hyper=method_params,
        code=method_digest,
        cls=method_class_arg,
        device=config["train"]["device"],
        seed=config["train"]["seed"],
        checkpoint_every=config["train"]["checkpoint_every"],
        checkpoint_seconds=config["train"]["checkpoint_seconds"],
        deterministic="--deterministic" if config["train"]["deterministic"] else "",
        out=output_dir,
        data=data_access,
    shell:
        "ichbench train --method {wildcards.method} {params.cls} --params '{params.hyper}' "
        "--manifest {input.manifest} --out {params.out} --device {params.device} --seed {params.seed} "
        "--checkpoint-every {params.checkpoint_every} --checkpoint-seconds {params.checkpoint_seconds} "
        "--threads {threads} {params.deterministic} {params.data} > {log} 2>&1"
