#!/usr/bin/env bash
# The GPU checks for a lent device (one H100/H200), in one script of about 10 minutes; not
# needed for CI and not yet run (no device was lent when it was written). Prints tables:
#   1. paper resolution (GTA5 1280x720 source, Cityscapes 1024x512 target), R101, batch 1+1:
#      fp32 against the fast path (bf16-mixed / 16-mixed, channels_last, compile) for AdvEnt,
#      CLAN and MaxSquare: seconds per iteration and peak allocated memory;
#   2. fused forwards at equal crops (512x1024 both), frozen BN;
#   3. DAFormer (MiT-B5, 512x512 crops, batch 2 + 2), fp32 and bf16-mixed;
#   4. MIC(HRDA) (MiT-B5, 1024x1024 crops, batch 2 + 2), fp32 and bf16-mixed, with and without
#      activation checkpointing of the MiT blocks: peak allocated memory;
#   5. the GPU-marked tests (AMP with each optimiser, DDP with NCCL on one GPU) if present.
# Fused forwards need source and target of one size, so they are not in table 1.
set -euo pipefail
cd "$(dirname "$0")/.."
PAPER="--source 720 1280 --target 512 1024 --device cuda --warmup 3 --iterations 10"
for method in AdvEnt CLAN MaxSquare; do
  python benchmarks/train_step.py --method "$method" $PAPER \
    --precision 32-true bf16-mixed 16-mixed --channels-last off on
done
python benchmarks/train_step.py --method AdvEnt $PAPER --precision bf16-mixed \
  --channels-last on --compile off on
python benchmarks/train_step.py --method AdvEnt --source 512 1024 --device cuda --warmup 3 \
  --iterations 10 --precision bf16-mixed --bn-stats frozen --channels-last on --fused off on
# DAFormer at the paper's resolution: MiT-B5 + DAFormer head, 512x512 crops, 2 source + 2 target.
python benchmarks/train_step.py --method DAFormer --segmenter-args '{}' --source 512 512 \
  --batch-size 2 --device cuda --warmup 3 --iterations 10 --precision 32-true bf16-mixed
# MIC(HRDA) at the paper's resolution: the official 22.5 GB (HRDA, fp32) and ~29 GB (with MIC).
MIC='{"mic": {"block_size": 64}, "pseudo_weight_crop": [0, 0]}'
for checkpointing in false true; do
  python benchmarks/train_step.py --method DAFormer --segmenter udaseg.models.HRDA \
    --segmenter-args "{\"encoder\": {\"class_path\": \"udaseg.models.MixTransformer\", \"init_args\": {\"variant\": \"b5\", \"gradient_checkpointing\": $checkpointing}}}" \
    --init-args "$MIC" --source 1024 1024 --batch-size 2 --device cuda --warmup 2 --iterations 5 \
    --precision 32-true bf16-mixed
done
python -m pytest -q -p no:cacheprovider tests/test_fast_path.py tests/test_ddp.py
