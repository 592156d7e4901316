#!/usr/bin/env bash
# Everything a lent GPU session measures, as one prepared command per device call (see benchmarks/RESULTS.md):
#
#   bash benchmarks/device_prepare.sh                      # here, once: wheels in .whl/, data in .device/
#   device run: bash benchmarks/device_run.sh video        # ~8.5 min: CUDA tests, HNeRV 1.5M Bunny, NIRVANA
#   device run: bash benchmarks/device_run.sh extra        # ~6 min, at once while the machine is warm
#
# Each step has its own time limit, so one that hangs or overruns does not cost the others. Results land in
# $OUT (log.txt, results.tgz with every JSON the benchmarks wrote); without $OUT (a CPU rehearsal) in
# results/device. QUICK=1 shrinks every step to a few seconds (a rehearsal on the CPU: same commands, tiny runs).
set -u -o pipefail
cd "$(dirname "$0")/.."
part=${1:-video}
OUT=${OUT:-results/device}
PY=${PY:-python3}
mkdir -p "$OUT"
work=$(mktemp -d)
log="$OUT/log-$part.txt"
export PYTHONUNBUFFERED=1

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import constriction" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed" | tee -a "$log"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=${PYTHONPATH:-}:$PWD
fi

pack() { tar czf "$OUT/results-$part.tgz" --exclude='*.ncb' --exclude='*.ckpt.*' -C "$work" . 2>/dev/null; }
step() {  # NAME SECONDS COMMAND...: run with a limit, log it, keep going on failure
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$log"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
    pack
}

quick=${QUICK:-0}
if [ "$quick" = 1 ]; then
    HNERV=(--quick --budgets 5); NIRV=(--quick --budgets 5); SMALL=(--quick --budgets 5)
    PC=(--limit-train 300 --limit-test 100 --epochs 1 --latents 4 --device auto)
else
    HNERV=(--size 1.5M --budgets 210); NIRV=(--budgets 60); SMALL=(--size 1.5M --budgets 60)
    PC=(--latents 32 --epochs 60 --shift 1 --smooth 5 --device cuda)
fi

step environment 60 bash -c "nvidia-smi -L 2>/dev/null; $PY -c 'import torch, numpy, constriction, compressai, av, sklearn, scipy;
print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"-\", \"numpy\", numpy.__version__)'"

case $part in
video)
    # the CUDA-only test (CPU and GPU integer tables equal) and the codecs' round trips on this machine
    step tests 90 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_pc_coding.py tests/test_quant.py \
        tests/test_fit.py tests/test_inr_codec.py
    # issue 3: >= 35.57 dB at <= 0.11 bpp within 210 s of fitting; decode >= 1500 fps
    step hnerv 330 "$PY" -m benchmarks.gpu_fit --codec hnerv "${HNERV[@]}" --out "$work/hnerv"
    # issue 4: NIRVANA to HNeRV's quality >= 5x faster, decode >= 2x faster
    step nirvana 140 "$PY" -m benchmarks.gpu_fit --codec nirvana "${NIRV[@]}" --out "$work/nirvana"
    ;;
extra)
    # issue 31: the GPU path (compile with its warm-up, fp16 decoding, settings restored), on this GPU for real
    step gpu_path 120 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_gpu_path.py
    # issue 4: NeRV++ against NeRV at the same size and budget
    step nervpp 110 "$PY" -m benchmarks.gpu_fit --codec nervpp "${SMALL[@]}" --out "$work/nervpp"
    step nerv 100 "$PY" -m benchmarks.gpu_fit --codec nerv "${SMALL[@]}" --out "$work/nerv"
    # issue 6: HCLT training on CUDA, coding speed on this machine's CPU and GPU
    if [ -f .device/train-first10k-images-idx3-ubyte.gz ]; then
        step pc 150 "$PY" -m benchmarks.lossless --name mnist --no-classical "${PC[@]}" \
            --train .device/train-first10k-images-idx3-ubyte.gz --test .device/t10k-images-idx3-ubyte.gz \
            --out "$work/pc"
    fi
    ;;
*)
    echo "usage: device_run.sh video|extra" >&2; exit 2 ;;
esac
pack
echo "results: $OUT/results-$part.tgz, log: $log"
