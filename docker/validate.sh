#!/usr/bin/env bash
# Validate an rts_seg image on a GPU VM: prints PASS/FAIL/SKIP per check, exits non-zero on any FAIL.
#   docker/validate.sh IMAGE            host checks (docker, nvidia-smi), then inside IMAGE:
#                                       GPU visible, compute capability, image variant = GPU generation,
#                                       imports, a few training steps on generated data
#   docker/validate.sh --local [ARGS]   the in-image checks in the current Python environment (no Docker;
#                                       what CI runs): GPU checks SKIP without a GPU
# Env: VALIDATE_STEPS (default 3) training steps; DOCKER_GPUS (default all) for `docker run --gpus`.
set -uo pipefail
steps="${VALIDATE_STEPS:-3}"

if [ "${1:-}" = --local ]; then
  shift
  exec rts-seg image-check --steps "$steps" "$@"
fi
if [ $# -ne 1 ] || [[ "$1" == -* ]]; then awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2; fi
image="$1"
fail=0
report() { printf '%-4s %s\n' "$1" "$2"; if [ "$1" = FAIL ]; then fail=1; fi; }

if ! command -v docker > /dev/null; then report FAIL "docker: not installed on this machine"; exit 1
elif ! server="$(docker version --format '{{.Server.Version}}' 2> /dev/null)"; then
  report FAIL "docker: the daemon is not reachable (sudo systemctl start docker; add yourself to the docker group)"; exit 1
else report PASS "docker: engine $server"; fi
if gpus="$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2> /dev/null)" && [ -n "$gpus" ]; then
  report PASS "host gpu: $(echo "$gpus" | wc -l) x $(echo "$gpus" | head -n 1)"
else report FAIL "host gpu: nvidia-smi finds no GPU (install the NVIDIA driver and container toolkit)"; fi
if docker image inspect "$image" > /dev/null 2>&1 || docker pull "$image" > /dev/null; then report PASS "image: $image"
else report FAIL "image: $image not found locally nor pullable (gcloud auth configure-docker REGION-docker.pkg.dev?)"; exit 1; fi

docker run --rm --gpus "${DOCKER_GPUS:-all}" --shm-size 2g --entrypoint rts-seg "$image" \
  image-check --require-gpu --steps "$steps" || fail=1
if [ "$fail" = 0 ]; then echo "validate.sh: PASS $image"; else echo "validate.sh: FAIL $image" >&2; fi
exit "$fail"
