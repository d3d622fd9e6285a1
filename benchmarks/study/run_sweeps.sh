#!/usr/bin/env bash
# Run study sweeps one after another with the library's serial runner, niced, pinned code version.
#
# Usage (repo root):
#   PLOP_HOME=/path/to/.plop bash benchmarks/study/run_sweeps.sh ITEM [ITEM ...]
#   ITEM = NAME                  the whole sweep deploy/sweeps/NAME.yaml
#        | NAME:MODEL[:TASK]     only that model's (and task's) cells of it, e.g. study-nfn-maps:gemma3-270m:gsm8k
#        | NAME:MODEL:T1,T2,...  that model's cells for several tasks (e.g. one n of study-stability-n-large:
#                                qwen2.5-coder-0.5b:docs/study/data/gsm8k-n512-s0.jsonl,docs/study/data/gsm8k-n512-s1.jsonl)
# Each sweep's start and end (rc, wall seconds) are printed around the runner's own progress.
# PLOP_STUDY_NICE sets the niceness (default 15; 19 beside a CI run).
#
# Why a script: the study runs in the background on a shared 2-core box, across sessions. Every sweep uses
# PLOP_CODE_VERSION=study-1 (docs/study.md), so a rerun reuses finished units. NAME:MODEL:TASK only
# schedules: a cell's key hashes the model, the sample, the scorer/selection/finetune configs and the code
# version, not the sweep's model/task lists or the root's name, so the cells it writes are exactly the
# cells the whole sweep would write, and the whole sweep run later prints `cached` for them.
# A subset run writes the sweep's sweeps/NAME/manifest.json and summary.md for that subset only: finish with
# the whole sweep (every unit `cached`, seconds) before committing, so the manifest lists every unit.
set -u
cd "$(dirname "$0")/../.."
source .ci/env.sh
export PLOP_CODE_VERSION="${PLOP_CODE_VERSION:-study-1}"
for item in "$@"; do
  IFS=: read -r name model task <<< "$item"
  sets=()
  if [ -n "${model:-}" ]; then
    entry=$(.venv/bin/python -c "import sys, yaml, json; d = yaml.safe_load(open(sys.argv[1])); \
m = [x for x in d['models'] if x.get('name') == sys.argv[2]]; print(json.dumps(m)) if m else sys.exit(sys.argv[2] + ': no such model name in ' + sys.argv[1])" \
      "deploy/sweeps/$name.yaml" "$model") || exit 2
    sets+=(--set "models=$entry")
  fi
  [ -n "${task:-}" ] && sets+=(--set "tasks=[$task]")
  start=$(date +%s)
  echo "=== $item start $(date -u +%FT%TZ)"
  nice -n "${PLOP_STUDY_NICE:-15}" .venv/bin/plop sweep "deploy/sweeps/$name.yaml" --serial "${sets[@]}"
  rc=$?
  echo "=== $item end rc=$rc wall_s=$(( $(date +%s) - start ))"
done
