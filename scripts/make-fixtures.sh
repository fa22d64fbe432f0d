#!/usr/bin/env bash
# Regenerate the committed parity fixtures (tests/fixtures/{images,tokenizer,llava-tiny,llava-tiny-gqa}, and
# the judge, Mllama, LLaVA-NeXT and DeBERTa fixtures)
# and the CLI demo (demo/). CI never runs this; the outputs are committed.
#
#   scripts/make-fixtures.sh                 # create/refresh the venv, then generate
#   scripts/make-fixtures.sh --search-seeds 1729:40   # extra args go to make_fixtures.py
#
# Environment: PYTHON (default python3, needs 3.10+), SKIP_PIP=1 to skip the pip install step,
# VQA_OFFICIAL=<GT-Vision-Lab/VQA checkout> to regenerate the VQA accuracy fixtures.
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
# LLaVA-NeXT fixtures (tests/fixtures/llava-next-*, issue 11); they reuse tests/fixtures/{tokenizer,images}.
# `make_llava_next_fixtures.py --check target/debug/icet` is the manual "never seen" check (see tools/fixtures/README.md).
case " $* " in *" --search-seeds"*) ;; *) "$VENV/bin/python" "$FIX/make_llava_next_fixtures.py" ;; esac
# DeBERTa-v2/v3 reward-model fixtures (tests/fixtures/judges/deberta-*, issue 12).
case " $* " in *" --search-seeds"*) ;; *) "$VENV/bin/python" "$FIX/make_deberta_fixtures.py" ;; esac
# VQA accuracy fixtures (tests/fixtures/vqa/, issue 12): the official GT-Vision-Lab/VQA evaluation code
# scores generated files. It is not vendored: point VQA_OFFICIAL at a checkout (git clone
# https://github.com/GT-Vision-Lab/VQA) to regenerate them.
case " $* " in *" --search-seeds"*) ;; *)
    if [ -n "${VQA_OFFICIAL:-}" ]; then
        "$VENV/bin/python" "$FIX/make_vqa_fixtures.py" --official "$VQA_OFFICIAL"
    else
        echo "skipping tests/fixtures/vqa (set VQA_OFFICIAL to a GT-Vision-Lab/VQA checkout to regenerate)" >&2
    fi ;;
esac
