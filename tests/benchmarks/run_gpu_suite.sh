#!/usr/bin/env bash
# The CUDA checks and the GPU benchmarks in one run, in priority order, within a time budget.
#
# usage: tests/benchmarks/run_gpu_suite.sh WORK_DIR [BUDGET_S]
#
# Needs `cryoviz` importable and on PATH, and `cryodrgn` (cryoDRGN 4.3.1, its own
# environment) on PATH for the two side-by-side benchmarks. Simulates its datasets
# into WORK_DIR (box 64, 2 Å/px, as in the CPU runs), then runs
#   1. pytest tests/test_cuda.py                (CUDA gives the CPU's answers)
#   2. bench_train_vs_cryodrgn.py --device cuda (issue 3: seconds per epoch, FSC)
#   3. bench_pose_search.py --device cuda       (issue 4: images/s, s per EM iteration)
#   4. bench_abinit_vs_cryodrgn.py --device cuda, each program stopped after ABINIT_S
#   5. bench_forward_backproject.py --device cuda
#   6. bench_gmm_projection.py --device cuda      (the gmm recipes' projection and epochs)
#   7. step 2 again in bf16 with 80 % of the pixels (--reuse-cryodrgn --precision bf16
#      --set pixel_fraction=0.8: the setting that is 3.5x faster per epoch on the CPU)
# Each step gets what is left of BUDGET_S (default 540); a step that runs out is
# stopped and the next ones are skipped. Results JSONs and logs go to WORK_DIR.
# Environment: DEVICE (cuda), N_TRAIN (10000), N_ABINIT (20000), TRAIN_EPOCHS (3),
# ABINIT_S (90), POSE_PARTICLES (2000).
set -u
WORK=${1:?usage: run_gpu_suite.sh WORK_DIR [BUDGET_S]}
BUDGET=${2:-540}
DEVICE=${DEVICE:-cuda}
N_TRAIN=${N_TRAIN:-10000}
N_ABINIT=${N_ABINIT:-20000}
TRAIN_EPOCHS=${TRAIN_EPOCHS:-3}
ABINIT_S=${ABINIT_S:-90}
POSE_PARTICLES=${POSE_PARTICLES:-2000}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
START=$(date +%s)
mkdir -p "$WORK"

left() { echo $((BUDGET - ($(date +%s) - START))); }

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 remaining
    shift 2
    remaining=$(left)
    if [ "$remaining" -lt 20 ]; then
        echo "=== $name: skipped, ${remaining} s of the budget left"
        return
    fi
    [ "$limit" -gt "$remaining" ] && limit=$remaining
    echo "=== $name (limit ${limit} s) at $(($(date +%s) - START)) s"
    timeout -k 5 "$limit" "$@" >"$WORK/$name.log" 2>&1
    echo "=== $name: exit $? at $(($(date +%s) - START)) s"
    tail -n 30 "$WORK/$name.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$WORK/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
        torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" \
    | tee -a "$WORK/gpu.txt"
command -v cryodrgn >/dev/null && cryodrgn --version 2>&1 | tail -n 1 | tee -a "$WORK/gpu.txt"

# the datasets, simulated on the CPU cores while the CUDA tests run
cryoviz simulate -o "$WORK/trvae" --n-particles "$N_TRAIN" --box 64 --pixel-size 2 --snr 0.1 \
    --states 4ake,1ake --seed 0 >"$WORK/simulate_trvae.log" 2>&1 &
SIM_TRVAE=$!
cryoviz simulate -o "$WORK/abinit" --n-particles "$N_ABINIT" --box 64 --pixel-size 2 \
    --snr 0.1 --seed 5 >"$WORK/simulate_abinit.log" 2>&1 &
SIM_ABINIT=$!

step test_cuda 180 $PY -m pytest -q -p no:cacheprovider -W ignore "$REPO/tests/test_cuda.py" \
    -o addopts="" --junitxml="$WORK/test_cuda.xml"

wait $SIM_TRVAE; echo "simulate trvae: exit $?"
step train_vs_cryodrgn 200 $PY "$HERE/bench_train_vs_cryodrgn.py" --dataset "$WORK/trvae" \
    --cryodrgn "$(command -v cryodrgn || echo cryodrgn)" --epochs "$TRAIN_EPOCHS" \
    --device "$DEVICE" --output "$WORK/train_vs_cryodrgn_$DEVICE.json"

step pose_search 120 $PY "$HERE/bench_pose_search.py" --device "$DEVICE" \
    --particles "$POSE_PARTICLES"
cp "$HERE/results/pose_search_$DEVICE.json" "$WORK/" 2>/dev/null

wait $SIM_ABINIT; echo "simulate abinit: exit $?"
step abinit_vs_cryodrgn $((2 * ABINIT_S + 90)) $PY "$HERE/bench_abinit_vs_cryodrgn.py" \
    --dataset "$WORK/abinit" --cryodrgn "$(command -v cryodrgn || echo cryodrgn)" \
    --time-limit "$ABINIT_S" --device "$DEVICE" --output "$WORK/abinit_vs_cryodrgn_$DEVICE.json"

step forward_backproject 60 $PY "$HERE/bench_forward_backproject.py" --device "$DEVICE" \
    --output "$WORK/forward_backproject_$DEVICE.json"

step gmm_projection 120 $PY "$HERE/bench_gmm_projection.py" --device "$DEVICE" \
    --dataset "$WORK/trvae" --epochs 2 --output "$WORK/gmm_projection_$DEVICE.json"

step train_vs_cryodrgn_bf16_pixels08 120 $PY "$HERE/bench_train_vs_cryodrgn.py" \
    --dataset "$WORK/trvae" --cryodrgn "$(command -v cryodrgn || echo cryodrgn)" \
    --epochs "$TRAIN_EPOCHS" --device "$DEVICE" --reuse-cryodrgn --precision bf16 \
    --set pixel_fraction=0.8 --output "$WORK/train_vs_cryodrgn_bf16_pixels08_$DEVICE.json"

echo "=== done at $(($(date +%s) - START)) s"
