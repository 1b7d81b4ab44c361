# ichbench: DICOM -> cached windowed slices -> folds -> train x method x fold -> scores -> Table 1 + Figure 1.
#
#   snakemake --cores 2                              # the built-in synthetic default (config.yaml)
#   snakemake --cores 8 --configfile my-cq500.yaml   # your data: see README "Run on CQ500"
#   snakemake --workflow-profile profiles/slurm      # a SLURM cluster (README: "Run on a cluster")
#   snakemake --report results/report.html          # after a run: Table 1, Figure 1, runtimes, config
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/external_common.smk"


wildcard_constraints:
    method=METHOD_PATTERN,
    fold=r"\d+",
    shard=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_targets(),
        runtimes="results/runtimes.csv",
