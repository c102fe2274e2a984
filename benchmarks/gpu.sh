#!/usr/bin/env bash
# Full-size SDXL base + refiner on one CUDA GPU at 1024², ours against plain diffusers: seconds per step
# per stage, compile_unet on and off, memory_mode='offload' peak VRAM; one table on stdout.
# Builds random full-size weights first (on the GPU, fp16, under .cache/gpu-benchmark; about 7 GB of disk).
# Planned to finish in under 8 minutes on one H100. Options: see `python benchmarks/gpu.py --help`;
# `bash benchmarks/gpu.sh --tiny --device cpu` runs the same script on the tiny model on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c 'import torch, diffusers, modelscope; print("torch", torch.__version__, "cuda", torch.version.cuda, "diffusers", diffusers.__version__, "modelscope", modelscope.__version__)' >&2
exec "${PYTHON:-python}" benchmarks/gpu.py "$@"
