#!/usr/bin/env bash
# The Python install step of the rts_seg images, shared by docker/Dockerfile and tests/test_docker.py.
#   bash docker/install.sh [REQUIREMENTS]    default docker/requirements.txt (training: everything);
#                                            docker/requirements-infer.txt for the inference image
# Run from a folder holding the exported code (pyproject.toml, rts_seg/, the requirement files under docker/),
# with the python of an environment that already has torch and torchvision (the NVIDIA base image, or a test
# venv). torch, torchvision and triton are pinned to the versions already installed, so pip never replaces them.
# The Dockerfile sets PIP_NO_CACHE_DIR=1, so no pip cache stays in the image.
set -euo pipefail
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
requirements="${1:-docker/requirements.txt}"
[ -f "$requirements" ] || { echo "install.sh: no requirement file $requirements (run from the folder holding docker/)" >&2; exit 2; }

torch_before="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
keep="$(mktemp --suffix=.txt)"
trap 'rm -f "$keep"' EXIT
"$PYTHON" -m pip list --format=freeze | grep -iE '^(torch|torchvision|torchaudio|triton|pytorch-triton)==' > "$keep"
echo "install.sh: installing $requirements, keeping the base environment's $(tr '\n' ' ' < "$keep")"

"$PYTHON" -m pip install -c "$keep" -r "$requirements"
# the package needs a README to build; the images' tag never depends on the README, so a stub stands in
[ -f README.md ] || echo "rts_seg: see https://github.com/rts-seg/rts_seg" > README.md
"$PYTHON" -m pip install --no-deps .

torch_after="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
if [ "$torch_before" != "$torch_after" ]; then
  echo "install.sh: torch changed from $torch_before to $torch_after: a pin in $requirements pulls another torch" >&2
  exit 1
fi
echo "install.sh: rts_seg $(cd / && "$PYTHON" -c 'import rts_seg; print(rts_seg.__version__)') installed over torch $torch_after"
