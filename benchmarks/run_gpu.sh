#!/usr/bin/env bash
# Every GPU check in one go, by section. From the repository root:
#   bash benchmarks/run_gpu.sh [OUT_DIR] [SECTION ...]      (sections: kernels generation plan pipeline;
#                                                            default all)
# kernels (about 6 minutes on one H100): the GPU tests of the kernels, then the loss-head, train-step and
# packing benchmarks at their issue's shapes. generation (about 5 minutes): the engine's CUDA tests
# (eager and CUDA graphs), then the engine, eager and with CUDA graphs, against `generate` (dynamic and
# static cache) on the 1.24B Llama shape at batch 64, 128 and 256, and on long-tailed answer lengths
# (the quickstart's rewrites, a lognormal) at batch 128. plan (about 5 minutes): sdft plan's training-step
# memory against the CUDA allocator's peak of real steps (benchmarks/plan_accuracy.py, with the
# Llama-3.2-1B shape on the GPU; a case that cannot run prints its error in its row), then whole steps
# phase by phase: plain PyTorch and ZeRO 1-3 on one GPU (benchmarks/plan_zero.py). pipeline (about 3
# minutes, 71 s on 2 CPU cores): `sdft run examples/tiny.yaml` on the GPU as it is, with ZeRO-3 (training
# and distillation) on one GPU under torchrun, with QLoRA (bitsandbytes 4-bit, 8-bit AdamW) and with the
# on-policy objective; then one row per run (benchmarks/pipeline_summary.py: the card, each stage
# finished, losses finite). The quickstart's SmolLM2 (a 94 MB file) does not fit the 64 MiB the device
# tool carries, so it is not among them. All four sections take longer than a 15-minute lease: name the
# ones to run.
# Installs this repository (no dependencies) and the wheels in .whl/ (benchmarks/gpu_wheels.sh: DeepSpeed,
# datasets, bitsandbytes, ... and liger-kernel for the Liger baseline) into /tmp/site first: the GPU image
# has torch, triton and transformers, and no network. SDFT_WHEELS names another wheel folder and
# SDFT_PIPELINE_DEVICE=cpu runs the pipeline section on a machine without a GPU (how it is checked here).
# Each step has its own time limit and a failing step does not stop the next. Log: OUT_DIR/log.txt.
set -u
out=${1:-${OUT:-/tmp/sdft-gpu}}
sections=${*:2}
sections=${sections:-kernels generation plan pipeline}
wheels=${SDFT_WHEELS:-.whl}
mkdir -p "$out"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step() { local limit=$1; shift; echo "== [$(date +%T)] $*" | tee -a "$out/log.txt"
         timeout "$limit" "$@" 2>&1 | grep --line-buffered -v -e "Warning" -e "warnings.warn" | tee -a "$out/log.txt"; }
step 120 python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . $(ls "$wheels"/*.whl 2>/dev/null)
step 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
step 60 python3 -c "import importlib.util, importlib.metadata as m, torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'liger', m.version('liger-kernel') if importlib.util.find_spec('liger_kernel') else None)"
if [[ " $sections " == *" kernels "* ]]; then
step 150 python3 -m pytest -q -p no:cacheprovider -x tests/kernels
step 200 python3 benchmarks/loss_head.py --n 8192 32768 --h 4096 --v 32000 128256 --ignored 0.0 0.5 --dtype bfloat16 --repeat 5
step 60 python3 benchmarks/loss_head.py --n 32768 --h 4096 --v 128256 --ignored 0.0 0.5 --dtype bfloat16 --repeat 5 --frozen
step 120 python3 benchmarks/divergence_head.py --n 8192 --h 4096 --v 128256 --dtype bfloat16 --repeat 5
step 150 python3 benchmarks/train_step.py --shape llama3.2-1b --dtype bfloat16 --seq 2048 --rows 8 --steps 5
step 120 python3 benchmarks/packing.py --shape llama3.2-1b --dtype bfloat16 --seq 2048 --rows 4 --tokens 16384 --steps 4
fi
if [[ " $sections " == *" generation "* ]]; then
step 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/models/test_engine.py
step 300 python3 benchmarks/generation.py --shape llama3.2-1b --batch 64 128 256 --prompts 256 --prompt 256 --new 256
step 150 python3 benchmarks/generation.py --shape llama3.2-1b --batch 128 --prompt 256 --new 256 --lengths math
step 150 python3 benchmarks/generation.py --shape llama3.2-1b --batch 128 --prompt 256 --new 256 --lengths heavy
fi
if [[ " $sections " == *" plan "* ]]; then
step 300 python3 benchmarks/plan_accuracy.py
step 240 python3 benchmarks/plan_zero.py
fi
if [[ " $sections " == *" pipeline "* ]]; then
# From /tmp, so that the installed sdft runs (at the repository root the source tree would shadow it).
dev=${SDFT_PIPELINE_DEVICE:-cuda}
runs=/tmp/sdft-pipeline; rm -rf "$runs"
tiny=$PWD/examples/tiny.yaml
sdft=(env -C /tmp python3 -m sdft run "$tiny" device="$dev")
step 300 "${sdft[@]}" output_dir=$runs/tiny
step 300 env -C /tmp python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m sdft run "$tiny" \
  device="$dev" output_dir=$runs/zero3 train.deepspeed=zero3 distill.mode=zero3
step 300 "${sdft[@]}" output_dir=$runs/qlora train.method=qlora train.optimizer=adamw_8bit
step 300 "${sdft[@]}" output_dir=$runs/on-policy train.objective=on_policy
step 30 python3 benchmarks/pipeline_summary.py --device "$dev" "$runs"/tiny "$runs"/zero3 "$runs"/qlora "$runs"/on-policy
fi
echo "== [$(date +%T)] done" | tee -a "$out/log.txt"
