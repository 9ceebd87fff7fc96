#!/usr/bin/env bash
# Create .venv (if needed) and install cgworkbench into it.
# torch==2.13.0 is installed first when torch is missing: on these machines that pin takes the local CPU wheel,
# whereas an unpinned torch would pull gigabytes of CUDA packages. The project's range admits 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "torch==2.13.0"
fi
stamp=.venv/.cgwb-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
