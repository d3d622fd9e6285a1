#!/usr/bin/env bash
# Run study sweeps one after another with the library's serial runner, niced, pinned code version.
#
# Usage (repo root):
#   PLOP_HOME=/path/to/.plop bash benchmarks/study/run_sweeps.sh study-random-tokens study-cost-sft ...
#   (names are files deploy/sweeps/<name>.yaml; each line of the log gets the sweep's start/end wall time)
#
# Why a script: the study is long and runs in the background on a shared CPU box; every sweep must use
# PLOP_CODE_VERSION=study-1 so a rerun (this session or the next) reuses finished units (docs/study.md).
# A finished sweep rerun prints `cached` for every unit and recomputes nothing.
set -u
cd "$(dirname "$0")/../.."
source .ci/env.sh
export PLOP_CODE_VERSION="${PLOP_CODE_VERSION:-study-1}"
for name in "$@"; do
  start=$(date +%s)
  echo "=== $name start $(date -u +%FT%TZ)"
  nice -n 15 .venv/bin/plop sweep "deploy/sweeps/$name.yaml" --serial
  rc=$?
  echo "=== $name end rc=$rc wall_s=$(( $(date +%s) - start ))"
done
