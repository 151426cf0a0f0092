#!/usr/bin/env bash
# The CUDA measurements in one run (planned for about 10 minutes on one data-centre GPU), written under $OUT:
#   1. the training step of the demo config in fp32, channels_last, bf16, fp16 and AMP + channels_last (+ compile),
#      with the model-FLOP rate and, against PEAK_TFLOPS (the GPU's dense bf16/fp16 peak from its datasheet,
#      e.g. 989 for an H100/H200 SXM), the model-FLOP utilisation;
#   2. the same for scale s;
#   3. the Predictor end to end on CUDA (fp32 and fp16 autocast, batch 1 and 8 at 640x640) for scales s and l,
#      each from a 20-step training run so that its checkpoint holds that scale's network.
#
#   OUT=runs/gpu PEAK_TFLOPS=989 bash tools/gpu_benchmarks.sh
#   DEVICE=cpu QUICK=1 OUT=/tmp/gpu_smoke bash tools/gpu_benchmarks.sh     # the commands' wiring, on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-runs/gpu}
DEVICE=${DEVICE:-cuda}
PEAK=${PEAK_TFLOPS:-0}
mkdir -p "$OUT"
if [ "${QUICK:-0}" = 1 ]; then  # tiny sizes and steps: checks that every command runs, measures nothing
  BATCH=2; SIZE="64 128"; STEPS=2; NET=64x128; BATCHES="1"; REPEATS=1; VARIANTS="fp32 channels_last"
else
  BATCH=32; SIZE="256 512"; STEPS=20; NET=640x640; BATCHES="1 8"; REPEATS=20
  VARIANTS="fp32 channels_last bf16 fp16 amp_cl amp_cl_compile"
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/device.txt"

# shellcheck disable=SC2086  # the lists above are meant to split into words
$PY tools/benchmark.py train --config configs/synthetic_driving.yaml --device "$DEVICE" --batch $BATCH \
    --size $SIZE --variants $VARIANTS --repeats $REPEATS --peak-tflops "$PEAK" --json "$OUT/train_demo.json" \
    | tee "$OUT/train_demo.txt"
# shellcheck disable=SC2086
$PY tools/benchmark.py train --config configs/synthetic_driving_scales.yaml --device "$DEVICE" --batch $BATCH \
    --size $SIZE --variants $VARIANTS --repeats $REPEATS --peak-tflops "$PEAK" --json "$OUT/train_scale_s.json" \
    model.scale=s | tee "$OUT/train_scale_s.txt"

for scale in s l; do
  $PY tools/train.py --config configs/synthetic_driving_scales.yaml model.scale=$scale train.device="$DEVICE" \
      train.max_steps=$STEPS train.eval_interval=0 train.progress=false train.tensorboard=false \
      train.num_overlays=0 output_dir="$OUT/scale_$scale" > "$OUT/scale_$scale.train.log" 2>&1
  for amp in "" "--amp"; do
    # shellcheck disable=SC2086
    $PY tools/benchmark.py predictor --checkpoint "$OUT/scale_$scale/last.pt" --device "$DEVICE" \
        --sizes $NET --batches $BATCHES --repeats $REPEATS $amp \
        --json "$OUT/predictor_$scale${amp:+_amp}.json" | tee "$OUT/predictor_$scale${amp:+_amp}.txt"
  done
done
rm -f "$OUT"/scale_*/*.pt  # the checkpoints are not results
echo "done: $OUT"
