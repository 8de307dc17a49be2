#!/usr/bin/env bash
# One short GPU session (see the device notes in the README): install, the tests that need CUDA, and the
# throughput benchmark in fp16 at N=10 and N=50 (then fp32 against fp16). Writes gpu_check.log to $OUT
# (the device tool's output folder) or to the current folder.
set -euo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-.}/gpu_check.log"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -m pip install -q -e ".[dev]"
  python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_accelerator_path.py tests/test_backbone_split.py
  python benchmarks/throughput.py --device cuda --dtype fp16 --batch 8 --crops 10,50 --classes 100 --methods abs \
    --repeats 3 --low-precision-batch 8
} 2>&1 | tee "$log"
