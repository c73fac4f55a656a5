#!/usr/bin/env bash
# The alibi-detect peer lives in its own venv (it needs numpy < 2); see
# ../shared/notes/peer-environments.md. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.peer-alibi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import alibi_detect" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q --only-binary=:all: "alibi-detect[torch]==0.13.0" \
  torch==2.13.0 numpy==1.26.4 numba==0.59.1 llvmlite==0.42.0 "transformers<5"
