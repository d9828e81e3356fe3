#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what the GPU machine lacks to run `spatialkit run`: its image has Python 3.12
# with torch, transformers, pandas, seaborn ... but no Jupyter kernel stack and no papermill, and the repository's
# .venv cannot travel (a CPU torch, and over the 64 MiB a device call carries). This downloads them as wheels for
# that Python (cp312, manylinux x86-64) into .whl/ (git-ignored); a device call carries it (carry: [".whl"]) and
# benchmarks/gpu_check.sh installs it into /tmp/site before anything else.
#
# Which wheels: the dependency closure of papermill, ipykernel, nbformat, ipywidgets and jupytext as installed in
# this venv (the versions the tests pass with), minus the packages the GPU image already holds
# (benchmarks/gpu_image_packages.txt), plus this venv's transformers (the image's is older). jupyter-book is not
# carried: the GPU check times `spatialkit run`.
#
#   bash benchmarks/gpu_wheels.sh [--list]    # --list prints the name==version list and downloads nothing
#   env: PY (default .venv/bin/python), PYV (target Python, default 3.12), OUT (default .whl)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYV=${PYV:-3.12}
OUT=${OUT:-.whl}
LIST=0
for arg in "$@"; do
  case $arg in
    --list) LIST=1 ;;
    *) echo "gpu_wheels: unknown option '$arg' (allowed: --list)" >&2; exit 2 ;;
  esac
done

# name==version of every distribution the GPU machine lacks, from this venv's metadata
mapfile -t WANTED < <("$PY" - benchmarks/gpu_image_packages.txt <<'EOF'
import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

image = {norm(line.strip()) for line in open(sys.argv[1]) if line.strip() and not line.startswith("#")}
roots = ["papermill", "ipykernel", "nbformat", "ipywidgets", "jupytext"]
# carried although the image has it: its transformers is older (5.17) than the one the tests pass with, and
# the real-VLM adapter reads transformers' internals; its needs (hub, tokenizers, safetensors) the image meets
replace = {"transformers"}
found, stack = {}, list(roots) + sorted(replace)
while stack:
    name = norm(stack.pop())
    if name in found or (name in image and name not in replace):
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        sys.exit(f"gpu_wheels: {name} (needed by the kernel stack) is not installed in this venv")
    found[name] = dist.version
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            stack.append(req.name)
for name, version in sorted(found.items()):
    print(f"{name}=={version}")
EOF
)
if [[ $LIST == 1 ]]; then printf '%s\n' "${WANTED[@]}"; exit 0; fi

PLATFORMS=(manylinux1_x86_64 manylinux2010_x86_64 manylinux2014_x86_64)
for n in 17 24 27 28 31 34 35 36 37 38 39; do PLATFORMS+=("manylinux_2_${n}_x86_64"); done
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done

mkdir -p "$OUT"
failed=()
for spec in "${WANTED[@]}"; do
  # (pip's notes on this machine's local indexes are left out of the output)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    "${platform_args[@]}" -d "$OUT" "$spec" 2> >(grep -v "is ignored: it is neither" >&2) || failed+=("$spec")
done
size=$(du -sm "$OUT" | cut -f1)
echo "gpu_wheels: ${#WANTED[@]} distributions, $(ls "$OUT"/*.whl | wc -l) wheels in $OUT, ${size} MiB"
if (( ${#failed[@]} )); then
  echo "gpu_wheels: no cp$PYV manylinux wheel for: ${failed[*]}" >&2
  exit 1
fi
if (( size > 56 )); then
  echo "gpu_wheels: $OUT is ${size} MiB; with the repository it must stay under a device call's 64 MiB" >&2
  exit 1
fi
