#!/usr/bin/env bash
# The GPU checks of issue 11 as one short script for a lent GPU machine (or any CUDA workstation):
# the device generators' tests on CUDA, `ichbench bench` at the paper's size with 1, 2 and 4 concurrent
# trainings, and the environment, all copied to $OUT (default: results/device_bench). About 4-5 minutes on
# one H200; on a CPU `TINY=1 scripts/device_bench.sh` runs the same steps at toy size (about 2 minutes).
#
#   scripts/device_bench.sh                 # .venv/bin/python, else python3: torch, opencv, pandas, scikit-learn, pyyaml
#   OUT=/somewhere TINY=1 scripts/device_bench.sh
#
# Nothing is installed: the package runs from src/ (PYTHONPATH), and `ichbench bench` needs neither
# pydicom nor snakemake.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/device_bench}"
mkdir -p "$OUT"
# the project's venv where there is one (make setup), else python3; PYTHON=... names another
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
if ! "$PY" -c "import torch, cv2, pandas" 2>/dev/null; then
    echo "device_bench: $PY lacks torch, opencv or pandas; install requirements.txt or set PYTHON" | tee "$OUT/error.txt" >&2
    exit 2
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ "${TINY:-0}" = 1 ]; then
    SIZE=32; BATCH=4; SECONDS_EACH=0.3; ROWS="AE CutPaste"; CONC=1,2; CONC_S=2
else
    SIZE=128; BATCH=64; SECONDS_EACH=2; ROWS=""; CONC=1,2,4; CONC_S=10
fi
{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    git rev-parse HEAD 2>/dev/null || echo "not a git checkout"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

# 1. the device generators against OpenCV, on whatever device torch finds (pytest optional)
if "$PY" -c "import pytest" 2>/dev/null; then
    "$PY" -m pytest -q -p no:cacheprovider tests/test_device_anomalies.py 2>&1 | tail -5 | tee "$OUT/device_tests.txt"
fi

# 2. every row: ours vs bare vs reference-style loop, generators CPU vs device, projected Table 1;
#    then 1, 2, 4 AE trainings at once on the device
# shellcheck disable=SC2086
"$PY" -m ichbench bench --out "$OUT/bench.csv" --size "$SIZE" --batch "$BATCH" --seconds "$SECONDS_EACH" \
    --concurrent "$CONC" --concurrent-seconds "$CONC_S" $ROWS 2>&1 | tail -20 | tee "$OUT/bench.log"
ls -l "$OUT"
