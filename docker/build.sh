#!/usr/bin/env bash
# Build (and push) an rts_seg image tagged with the content hash of what goes into it.
#   docker/build.sh --arch hopper|ampere|pre-ampere [--target train|infer] [--tag-suffix S] [--push]
#                   [--dry-run] [--cloud-build]
# The image is ${RTS_SEG_REGISTRY}/${RTS_SEG_IMAGE}-${target}:${tag}-${arch}${suffix}, where tag is
# `rts-seg image-tag --arch A` (same files, same tag). Options win over the environment:
#   --registry R   (RTS_SEG_REGISTRY, e.g. us-central1-docker.pkg.dev/my-project/rts; default: none, local image)
#   --image NAME   (RTS_SEG_IMAGE, default rts-seg)
#   --base-image B (RTS_SEG_BASE_IMAGE, default nvcr.io/nvidia/pytorch:25.01-py3)
# --cloud-build builds and pushes with Google Cloud Build (docker/cloudbuild.yaml): no local Docker needed.
# --dry-run prints the commands instead of running them. The image reference is the last line printed.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
die() { echo "build.sh: error: $*" >&2; exit 2; }

arch="" target=train suffix="" push=0 dry=0 cloud=0
registry="${RTS_SEG_REGISTRY:-}" image="${RTS_SEG_IMAGE:-rts-seg}"
base="${RTS_SEG_BASE_IMAGE:-nvcr.io/nvidia/pytorch:25.01-py3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="${2:-}"; shift 2 ;;
    --target) target="${2:-}"; shift 2 ;;
    --tag-suffix) suffix="${2:-}"; shift 2 ;;
    --registry) registry="${2:-}"; shift 2 ;;
    --image) image="${2:-}"; shift 2 ;;
    --base-image) base="${2:-}"; shift 2 ;;
    --push) push=1; shift ;;
    --dry-run) dry=1; shift ;;
    --cloud-build) cloud=1; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown argument '$1'; see docker/build.sh --help" ;;
  esac
done
case "$arch" in pre-ampere|ampere|hopper) ;; *) die "--arch must be pre-ampere, ampere or hopper (got '${arch}')" ;; esac
case "$target" in train|infer) ;; *) die "--target must be train or infer (got '${target}')" ;; esac
if [ -n "$suffix" ]; then suffix="-${suffix#-}"; fi
if [[ ! "$suffix" =~ ^[A-Za-z0-9_.-]*$ ]]; then die "--tag-suffix may hold letters, digits, '.', '_' and '-' only"; fi
if [ "$cloud" = 1 ] && [ -z "$registry" ]; then die "--cloud-build needs --registry or RTS_SEG_REGISTRY (where Cloud Build pushes)"; fi
if [ "$push" = 1 ] && [ -z "$registry" ]; then die "--push needs --registry or RTS_SEG_REGISTRY"; fi

hash="$(rts-seg image-tag --arch "$arch" | tail -n 1)"
tag="${hash}-${arch}${suffix}"
repo="${registry:+${registry%/}/}${image}-${target}"
ref="${repo}:${tag}"

run() { if [ "$dry" = 1 ]; then local c; c="$(printf '%q ' "$@")"; echo "${c% }"; else "$@"; fi; }
if [ "$cloud" = 1 ]; then
  run gcloud builds submit --config docker/cloudbuild.yaml \
    --substitutions "_IMAGE=${repo},_TAG=${tag},_TARGET=${target},_GPU_ARCH=${arch},_BASE_IMAGE=${base}" .
else
  run docker build -f docker/Dockerfile --target "$target" --build-arg "GPU_ARCH=${arch}" \
    --build-arg "BASE_IMAGE=${base}" --label "org.opencontainers.image.version=${tag}" -t "$ref" .
  if [ "$push" = 1 ]; then run docker push "$ref"; fi
fi
echo "$ref"
