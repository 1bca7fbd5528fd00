#!/usr/bin/env bash
# Trains the built-in model and its three ControlNets on one CUDA GPU in about 8 minutes, with the project's
# own training code (`python app.py train ...`), each stage in a time budget (see engine/train/loop.py):
#   vae -> decoder fine-tuning and unet at once (both need only the VAE's encoder) -> pipeline -> 3 ControlNets at once
# Results: $OUT/builtin.tar + $OUT/unet.safetensors (the pipeline folder, split to stay under 16 MiB a file),
# $OUT/controlnets.tar, $OUT/log.txt. Budgets in minutes: VAE_MIN DEC_MIN UNET_MIN CN_MIN; DEVICE=cpu tries it here.
# INIT=assets/builtin continues a finished model instead: its VAE as is, its UNet and text encoder trained on for
# UNET_MIN at UNET_LR (the --init phase), then the pipeline and the ControlNets on the continued UNet.
set -u
OUT=${OUT:-/tmp/gpu-out}; DEVICE=${DEVICE:-cuda}; W=${WORK:-runs/gpu}; A=${ASSETS:-runs/gpu-assets}
VAE_MIN=${VAE_MIN:-1.5}; DEC_MIN=${DEC_MIN:-1.5}; UNET_MIN=${UNET_MIN:-3.2}; CN_MIN=${CN_MIN:-1.6}
INIT=${INIT:-}; UNET_LR=${UNET_LR:-3e-4}; POOL=${POOL:-100000}; UNET_BATCH=${UNET_BATCH:-256}; VAE_BATCH=${VAE_BATCH:-64}; CN_BATCH=${CN_BATCH:-64}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$W" "$A" /tmp/logs
if [ -d .whl ]; then  # the GPU machine has torch and transformers but not diffusers: wheels carried along
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
t0=$(date +%s)
logs() { for f in /tmp/logs/*.log; do echo "=== $f"; grep -v -i -E "warn|deprecat|steps_offset|^ |^\{|^\}" "$f" | tail -n 60; done >"$OUT/log.txt"; }
stage() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a /tmp/logs/0-stages.log; }
T="python3 app.py train builtin --device $DEVICE --work $W --out $A/builtin"
nvidia-smi --query-gpu=name,memory.total --format=csv >/tmp/logs/0-gpu.log 2>&1
if [ -n "$INIT" ]; then
  T="$T --init $INIT"
  stage unet continued from "$INIT"
  timeout 500 $T --stage unet --batch "$UNET_BATCH" --pool "$POOL" --minutes "$UNET_MIN" --unet-lr "$UNET_LR" \
    --workers 4 >/tmp/logs/3-unet.log 2>&1 || { logs; exit 1; }
else
  stage vae
  timeout 300 $T --stage vae --vae-batch "$VAE_BATCH" --minutes "$VAE_MIN" --workers 4 >/tmp/logs/1-vae.log 2>&1 || { logs; exit 1; }
  stage decoder and unet
  timeout 300 $T --stage decoder --vae-batch "$VAE_BATCH" --minutes "$DEC_MIN" --workers 4 >/tmp/logs/2-decoder.log 2>&1 &
  timeout 400 $T --stage unet --batch "$UNET_BATCH" --pool "$POOL" --minutes "$UNET_MIN" --workers 3 >/tmp/logs/3-unet.log 2>&1
  wait
fi
logs
stage pipeline
timeout 120 $T --stage pipeline >/tmp/logs/4-pipeline.log 2>&1 || { logs; exit 1; }
tar -C "$A" --exclude=diffusion_pytorch_model.safetensors -cf "$OUT/builtin.tar" builtin
cp "$A/builtin/unet/diffusion_pytorch_model.safetensors" "$OUT/unet.safetensors"
cp "$A/builtin/vae/diffusion_pytorch_model.safetensors" "$OUT/vae.safetensors"
logs
stage controlnets
for k in edge depth pose; do
  n=3; [ $k = pose ] && n=6
  timeout 300 python3 app.py train controlnets --kind $k --device "$DEVICE" --out "$A/builtin" --work "$W" \
    --batch "$CN_BATCH" --minutes "$CN_MIN" --workers $n >/tmp/logs/5-cn-$k.log 2>&1 &
done
wait
tar -C "$A" -cf "$OUT/controlnets.tar" controlnet-edge controlnet-depth controlnet-pose
stage done
logs
