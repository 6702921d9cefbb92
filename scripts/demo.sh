#!/usr/bin/env bash
# Set up, then run the main job: ingest a video, ask a question, print the answer with evidence.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VIGIL_VENV:-.venv}/bin/vigil" demo "$@"
