#!/usr/bin/env bash
# The GPU suite: one prepared run, under 8 minutes on one CUDA GPU, printing training tokens/s and MFU
# at the paper's size, generation speed at small size with CFG for 30 s of music, CLIP ViT-B/32 frames/s,
# Demucs (htdemucs architecture) and EnCodec encode speed. What each figure is: benchmarks/gpu.py.
#
# Needs: this project's Python packages (bash setup.sh, or `pip install -r requirements.lock` then
# `pip install -e .`) with a CUDA build of the same torch version in place of the CPU one, e.g.
#   pip install --force-reinstall --no-deps torch==<version in requirements.lock> --index-url https://download.pytorch.org/whl/cu126
# It installs nothing itself. Usage: bash benchmarks/gpu.sh [benchmarks/gpu.py options, e.g. --peak-tflops 312]
set -uo pipefail
cd "$(dirname "$0")/.."
# The interpreter: $PYTHON if set, else the active virtual environment's, else setup.sh's .venv, else python.
if [ -z "${PYTHON:-}" ]; then
    if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi

# One clear line when a requirement is missing, before anything slow.
missing=$("$PYTHON" - <<'PY' 2>/dev/null
import importlib.util
def missing(name):
    try:
        return importlib.util.find_spec(name) is None
    except ImportError:  # a dotted name whose parent package is missing
        return True
names = ("torch", "transformers", "demucs", "pyarrow", "av", "ruamel.yaml")
print(" ".join(n for n in names if missing(n)))
PY
) || { echo "benchmarks/gpu.sh: $PYTHON does not run; set PYTHON= or run bash setup.sh first" >&2; exit 2; }
if [ -n "$missing" ]; then
    echo "benchmarks/gpu.sh: missing Python packages: $missing (install the project: bash setup.sh, or pip install -r requirements.lock && pip install -e .)" >&2
    exit 2
fi
cuda=$("$PYTHON" -c "import torch; print('yes' if torch.cuda.is_available() else 'no ' + torch.__version__)" 2>&1 | tail -1)
if [ "$cuda" != "yes" ]; then
    echo "benchmarks/gpu.sh: no CUDA GPU visible to torch (${cuda#no }); run this on a GPU machine with a CUDA build of torch" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The suite is sized for about 4-5 minutes on an H100/H200; the limit keeps it under 8 whatever happens.
exec timeout --signal=INT --kill-after=20 470 "$PYTHON" benchmarks/gpu.py "$@"
