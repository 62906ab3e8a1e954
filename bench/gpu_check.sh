#!/usr/bin/env bash
# The CUDA path's checks in one run, for a lent GPU machine that is sent the working tree only
# (the device tool; its README says how). Each check's output goes to the terminal and to a
# file under $OUT; a failing check does not stop the next one. About 5-8 minutes.
#
#   here:  .venv/bin/python -m bench.device_kit prepare      (once: writes .device-kit/)
#   there: bash bench/gpu_check.sh                           (device run, carry [".device-kit"],
#                                                             timeout_s 600)
#
# 1. the GPU tests (tests/gpu): float32 against the CPU, bf16, compiled, NF4 bases;
# 2. the training-throughput benchmark on the GPU with a model of the default model's shape
#    (random weights: bench/device_kit.py says why the speeds hold and the losses do not).
set -u
out=${OUT:-/tmp/gpu-check}
python=${PYTHON:-python3}
kit=${KIT:-$PWD/.device-kit}  # KIT: another kit (a dry run of this script on a CPU)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ ! -d "$kit/wheels" ]; then
  echo "no $kit: run 'python -m bench.device_kit prepare' here and carry .device-kit" >&2
  exit 2
fi
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/selftune-site "$kit"/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/selftune-site:$PWD/src:$PWD
export SELFTUNE_TEST_TOKENIZER=$kit/tokenizer

status=0
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$python" -c 'import torch, transformers, peft, bitsandbytes
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
print("transformers", transformers.__version__, "peft", peft.__version__,
      "bitsandbytes", bitsandbytes.__version__)'
} 2>&1 | tee "$out/environment.txt"

timeout 240 "$python" -m pytest -p no:cacheprovider -m gpu -rA tests/gpu 2>&1 \
  | tee "$out/gpu-tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

model=/tmp/SmolLM2-135M-shape-random-weights
"$python" -m bench.device_kit --kit "$kit" model "$model" 2>&1 | tail -1
SELFTUNE_BASE_MODEL=$model SELFTUNE_DATA_DIR=/tmp/selftune-data \
  timeout 300 "$python" -m bench.training_throughput 2>&1 | tee "$out/throughput.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
