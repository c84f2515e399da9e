#!/usr/bin/env bash
# One call on a lent GPU host: train two candidate models side by side, then time inference there.
#
# Here first:  python -m radlint.models.pack --out .devdata/radiographs --splits train,val
#              (the held-out test images never leave this machine; the card is computed here)
# On the GPU host, from the project root, with .devdata carried:  bash models/train_gpu.sh SECONDS
# (DEVICE=cpu EXTRA="--samples-per-epoch 128 --size 64" bash models/train_gpu.sh 5: a dry run here.)
# Results land in $OUT (or ./gpu_out): model.pt per candidate, logs, bench.gpu's table.
# Candidates are chosen between here, on the validation split, before anything sees test.
set -u
SECONDS_BUDGET=${1:-300}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# The scripts import radlint.*: install this tree without dependencies (the host has torch and
# onnxruntime; it reaches no package index).
$PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || cat "$OUT/install.log"
{
  nvidia-smi -L
  nproc
  $PY -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers()); print('torch', torch.__version__, torch.cuda.get_device_name(0))"
} >"$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

common=(--data .devdata/radiographs --device "${DEVICE:-cuda}" --size 256 --samples-per-epoch 5600
        --batch-size 64 --workers 7 --projection-weight 1.5 --eval-every 10
        --fit-seconds "$SECONDS_BUDGET" ${EXTRA:-})
timeout $((SECONDS_BUDGET + 150)) $PY -m radlint.models.train --tag gpu_a "${common[@]}" >"$OUT/train_a.log" 2>&1 &
timeout $((SECONDS_BUDGET + 150)) $PY -m radlint.models.train --tag gpu_b --widths 32,64,128,224 "${common[@]}" >"$OUT/train_b.log" 2>&1 &
wait
tail -n 3 "$OUT/train_a.log" "$OUT/train_b.log"

for t in a b; do
  d=models/_work/gpu_$t
  if [ -f $d/model.pt ]; then cp $d/model.pt "$OUT/gpu_$t.pt"; else cp $d/last_ema.pt "$OUT/gpu_$t.pt"; fi
done
tar czf "$OUT/runs.tgz" models/_work/gpu_a/log.csv models/_work/gpu_a/summary.json \
  models/_work/gpu_b/log.csv models/_work/gpu_b/summary.json 2>/dev/null

[ "${BENCH:-1}" = 0 ] && exit 0
cks=()
for f in .devdata/ck/v2.pt "$OUT/gpu_a.pt" "$OUT/gpu_b.pt"; do [ -f "$f" ] && cks+=(--checkpoint "$f"); done
$PY -m bench.gpu --images 2048 "${cks[@]}" --out "$OUT/gpu.md" 2>&1 | tail -n 20
