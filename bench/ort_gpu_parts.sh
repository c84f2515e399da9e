#!/usr/bin/env bash
# Bring ONNX Runtime's CUDA build to a lent GPU host that cannot reach a package index, in parts.
#
# The host's image has PyTorch built for CUDA 13 (its nvidia-* CUDA 13 libraries included) and the
# CPU build of onnxruntime. onnxruntime-gpu 1.31.1 is built for CUDA 13 too (its CUDA provider
# needs libcudart.so.13, libcublas.so.13, libcurand.so.10; cuDNN 9 for CUDA 13), but its wheel is
# 255.6 MB and a device call carries at most 64 MiB with the working tree. xz -6 only gets the
# CUDA provider library from 284 to 186 MB, so the wheel travels as byte parts, one per call,
# while the machine stays warm (ignored files a call brought stay there until the machine is
# given back).
#
# Here:   bash bench/ort_gpu_parts.sh split      # downloads the wheel, writes .whl/part-00 ...
#         (add /.whl/ to .git/info/exclude once, so the parts stay out of git)
# There:  call k carries .whl/part-0k (k = 0 .. n-1, back to back: the machine goes idle after
#         ~30 s); the last call then runs
#         bash bench/ort_gpu_parts.sh join && export PYTHONPATH=/tmp/site && python3 -m bench.gpu
# `join` checks the sha256 that `split` recorded before installing, so a missing part fails loudly.
set -euo pipefail
VERSION=${ORT_GPU_VERSION:-1.31.1}
DIR=${WHL_DIR:-.whl}
PART_MB=${PART_MB:-44}  # the parts travel with the working tree (~16 MB), 64 MiB in all

case "${1:-}" in
split)
  mkdir -p "$DIR"
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$DIR/full" "onnxruntime-gpu==$VERSION"
  wheel=$(ls "$DIR"/full/onnxruntime_gpu-"$VERSION"-*.whl)
  rm -f "$DIR"/part-*
  split -b "${PART_MB}M" -d "$wheel" "$DIR/part-"
  (cd "$DIR/full" && sha256sum "$(basename "$wheel")") >"$DIR/SHA256"
  ls -l "$DIR"/part-* && cat "$DIR/SHA256"
  echo "carry one of $(ls "$DIR"/part-* | wc -l) parts per call, and $DIR/SHA256 with the last one"
  ;;
join)
  name=$(awk '{print $2}' "$DIR/SHA256")
  cat "$DIR"/part-* >"/tmp/$name"
  (cd /tmp && sha256sum -c) <"$DIR/SHA256"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "/tmp/$name"
  PYTHONPATH=/tmp/site python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
  ;;
*)
  echo "usage: $0 split|join" >&2
  exit 2
  ;;
esac
