#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.py needs on the GPU host, which has no network: the wheels
# its Python lacks and the GLUE files, in .gpu/ (ignored by git, carried by the device tool).
#
#   bash benchmarks/gpu_wheels.sh                  # fill .gpu/wheels and .gpu/glue (50 MiB)
#   bash benchmarks/gpu_wheels.sh --print-command  # the one `run` call that uses them
#
# The GPU host's Python 3.12 (the device notes' package list) has torch, transformers, peft,
# accelerate, pandas, pyarrow, scipy, scikit-learn, statsmodels, psutil, rich, typer, tokenizers
# and safetensors, but not pydantic
# (+ pydantic-core, annotated-types, typing-inspection), datasets (+ dill, multiprocess), gguf or
# bitsandbytes. Versions are the ones installed in this virtualenv (the tested ones);
# bitsandbytes is not installed here (CPU), so its version is pinned below: 0.50.2 ships the
# CUDA 13.0 library that host's torch (cu130) needs. peftlab itself goes as a wheel of this
# checkout too, so `import peftlab` works from any folder there; the command puts the checkout
# first on PYTHONPATH all the same. Extra pins (e.g. the transformers this checkout was tested
# with, 13 MiB): GPU_WHEELS_EXTRA="transformers==5.24.0" bash benchmarks/gpu_wheels.sh
# Everything that travels (working tree + .gpu) must stay under the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

COMMAND='python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl || exit 3; export PYTHONPATH=$PWD:/tmp/site PEFTLAB_DATA_DIR=$PWD/.gpu/glue HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1; timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py > $OUT/pytest_gpu.txt 2>&1; echo "pytest rc=$?"; tail -15 $OUT/pytest_gpu.txt; timeout 270 python3 -m benchmarks.gpu_check --device cuda --budget-s 210 > $OUT/gpu_check.txt 2>&1; echo "gpu_check rc=$?"; grep -E "^\[|error|warning" $OUT/gpu_check.txt | tail -40; python3 benchmarks/gpu_check.py --table $OUT/gpu_check.json; cp /tmp/peftlab-gpu-check.log $OUT/ 2>/dev/null; true'

if [[ "${1:-}" == "--print-command" ]]; then
  echo "run tool: carry [\".gpu\"], timeout_s 420, command:"
  echo "$COMMAND"
  exit 0
fi

PY="${PYTHON:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
BNB_VERSION="${BNB_VERSION:-0.50.2}"
DEST=.gpu
rm -rf "$DEST/wheels"
mkdir -p "$DEST/wheels" "$DEST/glue"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu/' >> .git/info/exclude; }

# name==version of each missing package, as installed here
pins=()
for dist in pydantic pydantic-core annotated-types typing-inspection typing-extensions \
            datasets dill multiprocess gguf; do
  version="$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$dist")"
  pins+=("$dist==$version")
done
pins+=("bitsandbytes==$BNB_VERSION")
# shellcheck disable=SC2206
pins+=(${GPU_WHEELS_EXTRA:-})

platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$DEST/wheels" "${pins[@]}"
# setuptools leaves build/ and peftlab.egg-info/ in the checkout: remove only what it added
leftovers=()
for d in build peftlab.egg-info; do [[ -e "$d" ]] || leftovers+=("$d"); done
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST/wheels" . >/dev/null 2>&1
for d in "${leftovers[@]}"; do rm -rf "$d"; done

# GLUE train/dev files (test splits are not used); the checkout's ../shared does not travel.
SRC="${PEFTLAB_DATA_DIR:-../shared/data/glue}"
for task in SST-2 MRPC RTE; do
  mkdir -p "$DEST/glue/$task"
  cp "$SRC/$task/train.tsv" "$SRC/$task/dev.tsv" "$DEST/glue/$task/"
done
cp "$SRC/README.md" "$DEST/glue/" 2>/dev/null || true
chmod -R u+w "$DEST/glue"

ls -1 "$DEST/wheels"
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null \
             | tail -1 | cut -f1)
gpu_bytes=$(du -sb "$DEST" | cut -f1)
total=$((tree_bytes + gpu_bytes))
echo "travels: working tree $((tree_bytes / 1048576)) MiB + .gpu $((gpu_bytes / 1048576)) MiB" \
     "= $((total / 1048576)) MiB (limit 64 MiB)"
if (( total > 64 * 1048576 )); then
  echo "error: over the device tool's 64 MiB: drop GPU_WHEELS_EXTRA or untracked files" >&2
  exit 1
fi
