#!/usr/bin/env bash
# Runs the GPU acceptance checks of benchmarks/gpu/checks.py and writes results.md (the table) and results.json.
#
#   bash benchmarks/gpu/run.sh          on the GPU machine, in one device call carrying benchmarks/gpu/wheels
#                                       (made here by benchmarks/gpu/prepare.sh): installs them offline, then runs
#                                       every check within 8 minutes; results under $OUT (else benchmarks/gpu/out)
#   bash benchmarks/gpu/run.sh --cpu    the dry run: every check's code path on the CPU with tiny models (CI)
#
# Further arguments go to checks.py (e.g. --checks bf16 nf4). Never needs the network.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
RESULTS=${OUT:-benchmarks/gpu/out}
if [[ " $* " != *" --cpu "* ]]; then
  shopt -s nullglob
  wheels=(benchmarks/gpu/wheels/*.whl)
  if (( ${#wheels[@]} == 0 )); then
    echo "run.sh: no wheels in benchmarks/gpu/wheels: run bash benchmarks/gpu/prepare.sh first and carry that folder" >&2
    exit 2
  fi
  site=${WHP_SITE:-/tmp/whp-site}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "${wheels[@]}" || exit 1
  export PYTHONPATH="$site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
limit=()  # on the GPU machine the checks must end within the call's budget; the CPU dry run just runs
[[ " $* " == *" --cpu "* ]] || limit=(timeout "${WHP_CHECKS_TIMEOUT:-450}")
exec "${limit[@]}" "$PYTHON" benchmarks/gpu/checks.py --out "$RESULTS" "$@"
