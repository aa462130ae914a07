#!/usr/bin/env bash
# The GPU measurements that issues 4 and 5 still need, prepared for a lent GPU machine (the `device` tool),
# each part under its 10-minute limit. Figures go to $OUT (the device tool brings them back); copy them
# into bench/results/ and bench/README.md.
#
# Here, once:   ../shared/tools/gpu-wheels.sh .whl && echo .whl/ >> .git/info/exclude
# There (carry .whl), one call per part:
#   bash bench/gpu_session.sh train     # rts_seg's step with torch.compile and the full protocol (~5 min warm-up)
#   bash bench/gpu_session.sh predict   # end to end vs raw forward: one 16384 px scene, then 4 scenes of 8192 px
#   bash bench/gpu_session.sh eager     # rts_seg vs the plain loop, both eager (a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: bash bench/gpu_session.sh train|predict|eager}
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
out=${OUT:-bench/results/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu_$part.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu_$part.txt"

case "$part" in
  train) # the plain loop with compile is the SPEC's anchor (136 img/s): not re-measured, to keep within one call
    timeout 570 python3 bench/train_throughput.py --compile --skip-plain --no-valid --warmup 4 --steps 24 --unique 48 \
      --json "$out/train_compile_protocol.json" 2>&1 | tee "$out/train_compile_protocol.txt" ;;
  eager)
    timeout 570 python3 bench/train_throughput.py --no-valid --json "$out/train_eager_protocol.json" 2>&1 | tee "$out/train_eager_protocol.txt" ;;
  predict)
    timeout 280 python3 bench/predict_throughput.py 2>&1 | tee "$out/predict_scene.txt"
    timeout 280 python3 bench/predict_throughput.py --scenes 4 --size 8192 2>&1 | tee "$out/predict_4scenes.txt" ;;
  *) echo "gpu_session.sh: unknown part '$part' (train, eager or predict)" >&2; exit 2 ;;
esac
