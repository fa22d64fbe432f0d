#!/usr/bin/env bash
# Regenerate the committed parity fixtures (tests/fixtures/{images,tokenizer,llava-tiny,llava-tiny-gqa})
# and the CLI demo (demo/). CI never runs this; the outputs are committed.
#
#   scripts/make-fixtures.sh                 # create/refresh the venv, then generate
#   scripts/make-fixtures.sh --search-seeds 1729:40   # extra args go to make_fixtures.py
#
# Environment: PYTHON (default python3, needs 3.10+), SKIP_PIP=1 to skip the pip install step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FIX="$ROOT/tools/fixtures"
VENV="$FIX/.venv"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
if [ "${SKIP_PIP:-0}" != "1" ]; then
    "$VENV/bin/python" -m pip install --quiet -r "$FIX/requirements.txt"
fi

cd "$ROOT"
"$VENV/bin/python" "$FIX/make_fixtures.py" "$@"
# Judge fixtures (tests/fixtures/judges/, issue 5); they reuse tests/fixtures/tokenizer, so they run after.
case " $* " in *" --search-seeds"*) ;; *) "$VENV/bin/python" "$FIX/make_judge_fixtures.py" ;; esac
# Llama 3.2 Vision (Mllama) fixtures (tests/fixtures/mllama-*, issue 4); they extend tests/fixtures/tokenizer.
case " $* " in *" --search-seeds"*) ;; *) "$VENV/bin/python" "$FIX/make_mllama_fixtures.py" ;; esac
