#!/usr/bin/env bash
# GPU checks of galprism in one go, for a machine with an NVIDIA GPU and no network:
#
#   1. tests/test_gpu.py: the exact-Gaussian posterior on CUDA in float32, tf32 and bf16,
#      and the U-Net separation on CUDA against the CPU;
#   2. benchmarks/sampler_speed.py on cuda with a large batch (one JSON object);
#   3. benchmarks/separate_throughput.py on cuda, bf16 and float32 networks (one JSON
#      object each).
#
# Everything runs under `timeout` and the whole script within 8 minutes. Usage, from the
# repository root:
#
#   bash benchmarks/gpu.sh                      # on the GPU machine
#   GALPRISM_GPU_DRY=1 bash benchmarks/gpu.sh   # dry run on a CPU: tiny sizes, < 3 minutes
#   bash benchmarks/gpu.sh fetch                # here, with network: wheels into .whl/
#
# Python: $GALPRISM_PYTHON if set, else the repository's .venv when it exists, else
# python3 (a GPU image's python3 with torch). galprism needs packages such an image may
# lack (astropy, galsim...): `fetch` downloads them as CPython 3.12 manylinux wheels into
# .whl/, and the run installs whatever .whl/ holds into a private folder first
# (pip --no-index, nothing is downloaded there). Logs go to $OUT or /tmp/galprism-gpu.
set -uo pipefail
cd "$(dirname "$0")/.."

# Wheels that `galprism separate` and the tests need beyond torch, numpy, scipy, click,
# h5py, rich, matplotlib and pyyaml, pinned so that one version of each travels (POT and
# photutils, for `galprism evaluate`, are left out).
WHEELS=(
    astropy==8.0.2 astropy-iers-data==0.2026.11.16.0.37.44 pyerfa==2.0.1.5
    galsim==2.8.5 lsstdesc.coord==1.3.1
)

WHL=${GALPRISM_GPU_WHEELS:-.whl} # where `fetch` puts the wheels and the run looks for them

if [[ "${1:-}" == "fetch" ]]; then
    if [[ "$WHL" == .whl ]]; then # keep the wheels out of git
        exclude=$(git rev-parse --git-path info/exclude 2>/dev/null) &&
            { grep -qx /.whl/ "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"; }
    fi
    mkdir -p "$WHL"
    for w in "${WHEELS[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
            --platform any -d "$WHL" "$w" || { echo "gpu.sh: could not fetch $w" >&2; exit 3; }
    done
    # GalSim's extension carries 190 MB of debug symbols: without them the wheels fit
    # the few tens of MB a machine without network can be sent.
    python3 - "$WHL"/galsim-*.whl <<'STRIP' || exit 3
import os, subprocess, sys, tempfile, zipfile
for wheel in sys.argv[1:]:
    tmp = wheel + ".tmp"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".so"):
                with tempfile.NamedTemporaryFile(suffix=".so", delete=False) as fh:
                    fh.write(data)
                subprocess.run(["strip", "--strip-debug", fh.name], check=True)
                with open(fh.name, "rb") as fh2:
                    data = fh2.read()
                os.unlink(fh.name)
            dst.writestr(info, data)
    os.replace(tmp, wheel)
STRIP
    du -sh "$WHL"
    exit 0
fi

DRY=${GALPRISM_GPU_DRY:-0}
LOGS=${OUT:-/tmp/galprism-gpu}
mkdir -p "$LOGS"
BUDGET=480 # seconds for everything
START=$SECONDS

left() { echo $((BUDGET - (SECONDS - START))); }

if [[ -n "${GALPRISM_PYTHON:-}" ]]; then
    PY=$GALPRISM_PYTHON
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi

SITE=""
if compgen -G "$WHL/*.whl" >/dev/null; then
    SITE=/tmp/galprism-site
    if [[ ! -f $SITE/.done ]]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHL"/*.whl || { echo "gpu.sh: installing $WHL failed" >&2; exit 3; }
        touch "$SITE/.done"
    fi
fi
export PYTHONPATH="$PWD/src${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import torch, numpy, astropy, galsim, click, pytest, galprism" 2>"$LOGS/import.log"; then
    echo "gpu.sh: $PY cannot import galprism's needs: $(tail -n 1 "$LOGS/import.log")" >&2
    echo "gpu.sh: run 'bash benchmarks/gpu.sh fetch' where pip works and carry .whl/" >&2
    exit 3
fi

if [[ "$DRY" == 1 ]]; then
    DEVICE=cpu
    SPEED=(--device cpu --batch 2 --size 16 --steps 2 --cg 1 --widths 8 8 --reps 1)
    THROUGHPUT=(--devices cpu --n-cutouts 2 --n-samples 1 --steps 2 --batch-size 2 --threads 1)
    PRECISIONS=(float32 bf16)
    export OMP_NUM_THREADS=1
else
    DEVICE=cuda
    if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        echo "gpu.sh: torch sees no CUDA device (GALPRISM_GPU_DRY=1 runs on the CPU)" >&2
        exit 3
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    SPEED=(--device cuda --batch 256 --steps 64 --cg 1 3 --reps 5)
    THROUGHPUT=(--devices cuda --n-cutouts 1024 --n-samples 8 --batch-size 64)
    PRECISIONS=(bf16 float32)
fi
"$PY" -c "import torch, galprism; print('torch', torch.__version__, 'galprism', \
galprism.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"

status=0
step() { # step NAME SECONDS command...: run with a time limit, note a failure
    local name=$1 limit=$2
    shift 2
    if ((limit > $(left))); then limit=$(left); fi
    if ((limit < 10)); then
        echo "gpu.sh: $name skipped, the 8-minute budget is spent" >&2
        status=1
        return
    fi
    timeout --kill-after=5 "$limit" "$@"
    local rc=$?
    if ((rc != 0)); then
        echo "gpu.sh: $name failed (exit $rc$( ((rc == 124)) && echo ", over ${limit} s"))" >&2
        status=1
    fi
}

step tests 150 "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml "$LOGS/tests.xml" \
    tests/test_gpu.py
step sampler_speed 100 "$PY" benchmarks/sampler_speed.py "${SPEED[@]}" --json
for precision in "${PRECISIONS[@]}"; do
    step "separate_throughput $precision" 100 "$PY" benchmarks/separate_throughput.py \
        "${THROUGHPUT[@]}" --precision "$precision" --json
done
echo "gpu.sh: done in $((SECONDS - START)) s on $DEVICE, status $status" >&2
exit $status
