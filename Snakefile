# ichbench: DICOM -> cached windowed slices -> folds -> train x method x fold -> scores -> Table 1 + Figure 1.
#
#   snakemake --cores 2                              # the built-in synthetic default (config.yaml)
#   snakemake --cores 8 --configfile my-cq500.yaml   # your data: see README "Run on CQ500"
#   snakemake --profile profiles/slurm               # a SLURM cluster
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


wildcard_constraints:
    method=METHOD_PATTERN,
    fold=r"\d+",
    shard=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        table="results/table1.csv",
        table_md="results/table1.md",
        figure="results/figure1.png",
