#!/usr/bin/env bash
# Create .venv with everything the book and the tests need. Idempotent: a second run is a no-op
# unless pyproject.toml changed. torch is installed first, pinned, so pip picks the CPU wheel where
# one is available instead of pulling a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.groundiff-stamp
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[book,dicom,monai,dev]"
echo "$want" > "$stamp"
