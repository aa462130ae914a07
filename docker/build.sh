#!/usr/bin/env bash
# Build (and push) an rts_seg image tagged with the content hash of what goes into it.
#   docker/build.sh --arch hopper|ampere|pre-ampere [--target train|infer|serve] [--tag-suffix S] [--push]
#                   [--source local|git] [--branch B] [--context DIR] [--dry-run] [--cloud-build]
# The image is ${RTS_SEG_REGISTRY}/${RTS_SEG_IMAGE}-${target}:${tag}-${arch}[-${branch}]${suffix}, where tag is
# `rts-seg image-tag --arch A` of the build context (same files, same tag).
#   --source local (default): the working tree as it is, uncommitted changes included.
#   --source git: a clean export (git archive) of a commit: --branch B's (default: the current branch), so
#                 uncommitted and untracked files never reach the image or its tag; the tag carries the branch
#                 (feat/x -> -feat-x). --context DIR exports there and keeps it (default: a temporary folder).
# Options win over the environment:
#   --registry R   (RTS_SEG_REGISTRY, e.g. us-central1-docker.pkg.dev/my-project/rts; default: none, local image)
#   --image NAME   (RTS_SEG_IMAGE, default rts-seg)
#   --base-image B (RTS_SEG_BASE_IMAGE, default nvcr.io/nvidia/pytorch:25.01-py3)
# --cloud-build builds and pushes with Google Cloud Build (docker/cloudbuild.yaml): no local Docker needed.
# --dry-run prints the commands instead of running them. The image reference is the last line printed.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
die() { echo "build.sh: error: $*" >&2; exit 2; }

arch="" target=train suffix="" push=0 dry=0 cloud=0 source=local branch="" context=""
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
    --source) source="${2:-}"; shift 2 ;;
    --branch) branch="${2:-}"; shift 2 ;;
    --context) context="${2:-}"; shift 2 ;;
    --push) push=1; shift ;;
    --dry-run) dry=1; shift ;;
    --cloud-build) cloud=1; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown argument '$1'; see docker/build.sh --help" ;;
  esac
done
case "$arch" in pre-ampere|ampere|hopper) ;; *) die "--arch must be pre-ampere, ampere or hopper (got '${arch}')" ;; esac
case "$target" in train|infer|serve) ;; *) die "--target must be train, infer or serve (got '${target}')" ;; esac
case "$source" in local|git) ;; *) die "--source must be local or git (got '${source}')" ;; esac
if [ "$source" = local ] && { [ -n "$branch" ] || [ -n "$context" ]; }; then die "--branch and --context go with --source git"; fi
if [ -n "$suffix" ]; then suffix="-${suffix#-}"; fi
if [[ ! "$suffix" =~ ^[A-Za-z0-9_.-]*$ ]]; then die "--tag-suffix may hold letters, digits, '.', '_' and '-' only"; fi
if [ "$cloud" = 1 ] && [ -z "$registry" ]; then die "--cloud-build needs --registry or RTS_SEG_REGISTRY (where Cloud Build pushes)"; fi
if [ "$push" = 1 ] && [ -z "$registry" ]; then die "--push needs --registry or RTS_SEG_REGISTRY"; fi

ctx=.
if [ "$source" = git ]; then
  git rev-parse --git-dir >/dev/null 2>&1 || die "--source git needs a git repository (run from your clone)"
  if [ -z "$branch" ]; then
    branch="$(git symbolic-ref --quiet --short HEAD)" || die "HEAD is detached: give --branch B"
  fi
  commit="$(git rev-parse --verify --quiet "${branch}^{commit}")" || die "no branch or commit '${branch}' in $(pwd)"
  if [ -n "$context" ]; then
    if [ -e "$context" ] && [ -n "$(ls -A "$context")" ]; then die "--context ${context} is not empty"; fi
    mkdir -p "$context"
  else
    context="$(mktemp -d "${TMPDIR:-/tmp}/rts_seg-build.XXXXXX")"
    trap 'rm -rf "$context"' EXIT
  fi
  # only what the commit holds: uncommitted and untracked files stay out of the context and the tag
  git archive --format=tar "$commit" | tar -x -C "$context"
  echo "# build context: ${context} (git archive ${commit:0:12} of ${branch})" >&2
  ctx="$context"
  slug="$(printf '%s' "$branch" | tr '/' '-' | tr -c 'A-Za-z0-9_.-' '-')"
  slug="${slug#[-.]}"
  suffix="-${slug:0:40}${suffix}"
fi

hash="$(rts-seg image-tag --arch "$arch" --root "$ctx" | tail -n 1)"
tag="${hash}-${arch}${suffix}"
repo="${registry:+${registry%/}/}${image}-${target}"
ref="${repo}:${tag}"

run() { if [ "$dry" = 1 ]; then local c; c="$(printf '%q ' "$@")"; echo "${c% }"; else "$@"; fi; }
if [ "$source" = git ] && [ "$dry" = 1 ]; then echo "git archive --format=tar ${commit} | tar -x -C ${ctx}"; fi
d="${ctx#.}"; d="${d:+${d}/}" # where docker/ lies: the working tree's (relative), or the export's
if [ "$cloud" = 1 ]; then
  run gcloud builds submit --config "${d}docker/cloudbuild.yaml" \
    --substitutions "_IMAGE=${repo},_TAG=${tag},_TARGET=${target},_GPU_ARCH=${arch},_BASE_IMAGE=${base}" "$ctx"
else
  run docker build -f "${d}docker/Dockerfile" --target "$target" --build-arg "GPU_ARCH=${arch}" \
    --build-arg "BASE_IMAGE=${base}" --label "org.opencontainers.image.version=${tag}" -t "$ref" "$ctx"
  if [ "$push" = 1 ]; then run docker push "$ref"; fi
fi
echo "$ref"
