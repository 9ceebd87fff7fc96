#!/usr/bin/env bash
# Set up the environment (first run only) and run the workbench's main job on the embedded default
# (alanine dipeptide). Extra arguments go to `cgwb run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
exec cgwb run "$@"
