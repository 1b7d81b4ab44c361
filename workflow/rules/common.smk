# Helpers shared by the workflow stages (targets, input functions, params).
import json
import os
import re
import shlex
import sys

# The rules run the package as `{PYTHON} -m ichbench`, importable from src/ without installation.
# PYTHON is the interpreter running Snakemake, or the conda environment's under `--sdm conda`.
SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SRC)

from ichbench import config as ichconfig  # noqa: E402
from ichbench.training.digest import code_digest  # noqa: E402
from ichbench.datasets import adapter as adapters  # noqa: E402

ichconfig.check_methods(config)
from ichbench.cohort import guards  # noqa: E402

# dataset: {name, root} (or today's source keys) -> the keys the rules read; missing files stop here
RESOLVED = adapters.resolve(config["dataset"])
DATASET = RESOLVED.dataset
guards.check_label_paths({**config, "dataset": DATASET})

METHODS = ichconfig.selected_rows(config)  # `rows:` (default: every row under `methods:`)
if len(METHODS) < len(config["methods"]):
    print(
        f"ichbench: running {len(METHODS)} of the {len(config['methods'])} rows (rows: {', '.join(METHODS)})",
        file=sys.stderr,
    )
FOLDS = list(range(config["splits"]["n_folds"]))
SHARDS = list(range(config["preprocess"]["shards"]))
SYNTHETIC = DATASET["source"] == "synthetic"
NIFTI = DATASET["source"] == "nifti"
DERIVED = RESOLVED.derived  # labels from the rule dataset_labels (results/data/dataset/)
SCAN_KEY = RESOLVED.scan_key
ADAPTER_KEYS = ("name", "root", "exclude", "masks", "version", "rsna_root")
INDEX_FILES = RESOLVED.index_files  # the adapter's file list (rule dataset_files), else the whole folder

METHOD_PATTERN = "|".join(re.escape(m) for m in METHODS)


def synthetic_params():
    return json.dumps({k: v for k, v in config["synthetic"].items() if k != "out_dir"}, sort_keys=True)


def dicom_dir():
    """The synthetic generator's output (so that the rule runs first) or the user's folder."""
    if SYNTHETIC:
        return os.path.join(config["synthetic"]["out_dir"], "dicom")
    return DATASET["dicom_dir"]


def gt_masks_dir():
    return "" if NIFTI else (DATASET.get("gt_masks_dir") or "")


def index_inputs(wildcards):
    """The scans (DICOM or NIfTI folder), the NIfTI masks and the series override file."""
    if NIFTI:
        inputs = {"data": DATASET["nifti_dir"]}
        if DATASET.get("nifti_masks_dir"):
            inputs["masks"] = DATASET["nifti_masks_dir"]
        return inputs
    inputs = {"data": dicom_dir()}
    if INDEX_FILES:
        inputs["files"] = INDEX_FILES
    if config["preprocess"].get("series_override"):
        inputs["override"] = config["preprocess"]["series_override"]
    return inputs


def index_args(wildcards, input):
    """Command line arguments of `ichbench index` naming its inputs and the series-selection settings."""
    q = shlex.quote
    if NIFTI:
        args = f"--nifti-dir {q(input.data)}"
        if DATASET.get("nifti_masks_dir"):
            args += f" --nifti-masks-dir {q(input.masks)}"
        return args
    pre = config["preprocess"]
    args = f"--dicom-dir {q(input.data)} --axial-tolerance-deg {pre.get('axial_tolerance_deg', 30.0)}"
    if pre.get("series_override"):
        args += f" --series-override {q(input.override)}"
    if pre.get("bone_patterns"):
        args += f" --bone-patterns {q(json.dumps(list(pre['bone_patterns'])))}"
    if SCAN_KEY != "patient":
        args += f" --scan-key {SCAN_KEY}"
    if INDEX_FILES:
        args += f" --file-list {q(input.files)}"
    return args


def derived(name):
    """A table the rule dataset_labels writes (adapter.DERIVED_FILES)."""
    return f"{adapters.DERIVED_DIR}/{name}"


def dataset_json():
    return json.dumps(config["dataset"], sort_keys=True)


def bhx_files():
    """The BHX box file(s) of dataset.bhx (a path or a list), CQ500 only."""
    value = DATASET.get("bhx") or []
    return [value] if isinstance(value, str) else list(value)


def bhx_used():
    """The box file(s) preprocess and split read: the boxes moved onto the chosen series
    (rule bhx_transfer) when dataset.bhx_transfer is on, else dataset.bhx as it is."""
    if bhx_files() and DATASET.get("bhx_transfer", True):
        return ["results/data/bhx_boxes.csv"]
    return bhx_files()


def bhx_args(wildcards):
    return " ".join(shlex.quote(p) for p in bhx_used())


def preprocess_inputs(wildcards):
    inputs = {"index": "results/data/index.csv", "series": "results/data/series_candidates.csv"}
    if gt_masks_dir() and (SYNTHETIC or DERIVED or os.path.isdir(gt_masks_dir())):
        inputs["gt"] = gt_masks_dir()
    if bhx_files():
        inputs["bhx"] = bhx_used()
    return inputs


def label_source():
    """ctfsh | reads | csv | masks. NIfTI scans take dataset.nifti_labels (csv) or, without it, their masks."""
    if DERIVED:
        return "csv"
    if NIFTI:
        return "csv" if DATASET.get("nifti_labels") else "masks"
    return DATASET["label_source"]


def label_file():
    """The scan label file passed as --labels (CTFSH file, scan_id,label table or none)."""
    if DERIVED:
        return derived("scan_labels.csv")
    if NIFTI:
        return DATASET.get("nifti_labels") or ""
    return DATASET.get("labels") or ""


def label_inputs(wildcards):
    """Label files the split rule reads; missing optional ones are simply not inputs."""
    inputs = {}
    source = label_source()
    if DERIVED:
        inputs.update({name.removesuffix(".csv"): derived(name) for name in adapters.DERIVED_FILES})
        if assignment_file():
            inputs["assignment"] = assignment_file()
        return inputs
    if source in ("ctfsh", "csv"):
        inputs["scan_labels"] = label_file()
    elif source == "reads":
        inputs["scan_labels"] = DATASET["reads"]
    if not NIFTI and DATASET.get("slice_labels") and (SYNTHETIC or os.path.exists(DATASET["slice_labels"])):
        inputs["slice_labels"] = DATASET["slice_labels"]
    if bhx_files():
        inputs["bhx"] = bhx_used()
    if source != "reads" and not NIFTI and DATASET.get("reads") and (SYNTHETIC or os.path.exists(DATASET["reads"])):
        inputs["reads"] = DATASET["reads"]  # reader ICH votes and subtypes (subtypes.py)
    if assignment_file():
        inputs["assignment"] = assignment_file()
    return inputs


def assignment_file():
    """splits.assignment: a patient -> fold file to reuse (never the run's own output)."""
    path = config["splits"].get("assignment") or ""
    if path and os.path.abspath(path) == os.path.abspath("results/splits/assignment.csv"):
        raise ichconfig.ConfigError(
            "splits.assignment names results/splits/assignment.csv, which the split rule writes; "
            "copy it elsewhere (e.g. config/assignment.csv) and point splits.assignment there"
        )
    return path


def assignment_args(wildcards):
    path = assignment_file()
    return f"--assignment-in {shlex.quote(path)}" if path else ""


def expected_args(wildcards):
    """dataset.expected (patients per class) and dataset.expected_action, for the split stage."""
    expected = DATASET.get("expected")
    if not expected:
        return ""
    return (
        f"--expected {shlex.quote(json.dumps(expected, sort_keys=True))} "
        f"--expected-action {DATASET.get('expected_action', 'fail')}"
    )


def slice_labels_file():
    if DERIVED:
        return derived("slice_labels.csv")
    return "" if NIFTI else (DATASET.get("slice_labels") or "")


def dataset_args(wildcards):
    """The split stage's scan key and a dataset adapter's patient, scan-info and exclusion tables ('' for
    today's datasets, so that their split job is unchanged)."""
    args = f"--scan-key {SCAN_KEY}" if SCAN_KEY != "patient" else ""
    if DERIVED:
        tables = {"patients": "patients.csv", "scan-info": "scan_info.csv", "excluded": "excluded.csv"}
        args += "".join(f" --{option} {derived(name)}" for option, name in tables.items())
    return args


def windows_json():
    return json.dumps(config["preprocess"]["windows"], sort_keys=True)


def method_params(wildcards):
    return ichconfig.params_json(config, wildcards.method)


def method_digest(wildcards):
    return code_digest(wildcards.method)


def method_class_arg(wildcards):
    """`--class module:attribute` for a row from outside the package (its `class:` under methods, or the
    installed entry point it was resolved from), else nothing."""
    from ichbench.methods.plugins import spec_of

    spec = spec_of(wildcards.method)
    return f"--class {shlex.quote(spec)}" if spec else ""


def _method_files(method):
    from ichbench.methods import get_method

    return get_method(method).input_files(ichconfig.method_params(config, method))


def method_files(wildcards):
    """Named inputs of a row's train and score jobs: the files it reads besides the data that exist
    (AE-PL: the VGG-19 weights, the feature statistics). Replacing one reruns the row."""
    return {name: path for name, path in _method_files(wildcards.method).items() if path}


def method_files_state(wildcards):
    """Which of those files a row uses (a param; their paths are in the hyper-parameters): adding one that
    was missing, e.g. the ImageNet VGG-19 weights after a run with random ones, reruns the row."""
    return json.dumps({name: bool(path) for name, path in _method_files(wildcards.method).items()}, sort_keys=True)


def score_files(kind):
    ext = {"scores": "csv", "maps": "maps.npz", "loc": "loc.json", "errors": "errors.npz"}[kind]
    return expand("results/scores/{method}/fold-{fold}.{ext}", method=METHODS, fold=FOLDS, ext=ext)


# Train and score jobs hold one GPU (`gpu` resource: local cap in profiles/default, --gpus=1 on SLURM), none
# when `train.device: cpu` asks for the CPU.
GPUS = 0 if str(config["train"]["device"]).strip().lower() == "cpu" else 1


def _memory_budget_gb():
    return float(config["train"].get("memory_budget_gb", 4))


def train_mem_mb(wildcards, attempt):
    """Memory of a train or score job: the slices it may load (train.memory_budget_gb) + 3 GB, at least 8000 MB."""
    return max(8000, int(1024 * _memory_budget_gb()) + 3072) * attempt


def report_mem_mb(base_mb, per_input_mb):
    """Memory of a report job that reads every score table: `base_mb`, or, for large inputs (RSNA-sized score
    tables: 1.3 GB of CSV for 750 k test slices), 1 GB + `per_input_mb` per MB of input (docs/performance.md,
    "Aggregation at RSNA size"). Evaluated once the inputs exist (Snakemake defers a missing file's size)."""

    def mem_mb(wildcards, input, attempt):
        return max(base_mb, int(1024 + per_input_mb * input.size_mb)) * attempt

    return mem_mb


def data_access(wildcards, threads):
    """--in-memory / --memory-budget-gb of train and score. How a fold is read does not change its results:
    a param function of `threads` is one Snakemake does not record, so changing these reruns nothing."""
    mode = config["train"].get("in_memory", "auto")
    mode = {True: "true", False: "false"}.get(mode, str(mode).lower())
    return f"--in-memory {mode} --memory-budget-gb {_memory_budget_gb()}"


def uses_conda():
    try:
        return any("conda" in str(m).lower() for m in workflow.deployment_settings.deployment_method)
    except AttributeError:
        return False


PYTHON = "python" if uses_conda() else sys.executable
# Every shell command runs `ichbench ...`: this interpreter with the package from src/.
shell.prefix(
    f'export PYTHONPATH={SRC}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ichbench() {{{{ {PYTHON} -m ichbench "$@"; }}}}; '
)

# `--sdm conda`: one environment for every rule, chosen by config `conda_env` (cuda or cpu).
CONDA_ENV = f"../../envs/ichbench-{config['conda_env']}.yaml"


def output_dir(wildcards, output):
    """The folder of a rule's first output (a param that follows the output path)."""
    return os.path.dirname(output[0])


def data_dir(wildcards, input):
    """The folder the index rule writes (beside its index.csv)."""
    return os.path.dirname(input.index)


def scan_id_format(wildcards):
    """A function, so that the "{n}" in the format is not taken for a wildcard."""
    return DATASET["scan_id_format"]


def model_runs():
    """The run.json written beside each model.pt (not a declared output of train: the bundle reads it from there)."""
    return expand("results/models/{method}/fold-{fold}/run.json", method=METHODS, fold=FOLDS)


def bundle_settings(wildcards):
    """What the results bundle records of the config (a function: the scan ID format's "{n}" is no wildcard)."""
    settings = {
        "protocol": config["protocol"],
        "label_source": label_source(),
        # the adapter keys only where set, so that today's runs record the dataset as before
        "dataset": {k: v for k, v in config["dataset"].items() if v is not None or k not in ADAPTER_KEYS},
        "table": config["table"],
        "rows": METHODS,
        "n_folds": len(FOLDS),
        "recipe": config.get("recipe"),
        "preprocess": {k: config["preprocess"][k] for k in ("image_size", "windows") if k in config["preprocess"]},
    }
    if SYNTHETIC:
        settings["synthetic"] = json.loads(synthetic_params())
    return json.dumps(settings, sort_keys=True)


def final_targets():
    """Table 1, the confound table, Figure 1, each row's error cases, the strata and the results bundle; the
    synthetic-anomaly picture when a self-supervised row is configured."""
    from ichbench.methods import get_method

    targets = ["results/table1.csv", "results/table1.md", "results/figure1.png"]
    targets += ["results/confounds.csv", "results/tables_extra.md"]
    targets += ["results/figures/forest_auc.png", "results/figures/roc_curves.png"]
    targets += expand("results/errors/{method}.{ext}", method=METHODS, ext=["csv", "png"])
    targets += ["results/strata.csv", "results/strata.md", "results/figures/sensitivity_by_size.png"]
    targets.append("results/ichbench-results.json")
    if any(get_method(m).group == "self-supervised" for m in METHODS):
        targets.append("results/figures/synthetic_anomalies.png")
    return targets
