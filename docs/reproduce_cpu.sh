#!/usr/bin/env bash
# Re-run every recipe's reduced-scale version on this CPU:
#   bash docs/reproduce_cpu.sh [--jobs N|auto] [--update-docs] [recipe ...]      (default: every recipe)
# Its runs live in runs/reproduce_cpu/<recipe>/, apart from yours under runs/<recipe>/ (nothing of yours
# is touched or deleted). Finished runs are kept, so a rerun trains only what is missing, and interrupted
# ones resume. Each recipe's report (PNG figures + REPORT.md) is written beside its runs; --update-docs
# also copies it to docs/<recipe>/ and records the recipe's wall time in docs/timings.txt (the committed
# figures): without it the tracked tree is left as it is. --jobs trains that many variants at once
# (cnnkit fit --jobs: a worker process per core taking the next variant; auto picks from the machine): all
# the recipes as one fit (--recipe each), one pool for all their variants, then their reports as many at once;
# docs/timings.txt then gets one line for them together instead of one per recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
runs_dir="${RUNS_DIR:-runs/reproduce_cpu}"  # RUNS_DIR=elsewhere keeps another set of runs (benchmarks/jobs.py)
update_docs=0
jobs=()
recipes=()
while [ $# -gt 0 ]; do
  case "$1" in
    --update-docs) update_docs=1 ;;
    --jobs|-j)
      [ -n "${2:-}" ] || { echo "reproduce_cpu: --jobs needs a value: a whole number or auto" >&2; exit 2; }
      jobs=(--jobs "$2"); shift ;;
    --jobs=*) jobs=(--jobs "${1#--jobs=}") ;;
    -*) echo "reproduce_cpu: unknown option '$1' (use --jobs N|auto, --update-docs, recipe names)" >&2; exit 2 ;;
    *) recipes+=("$1") ;;
  esac
  shift
done
if [ ${#recipes[@]} -eq 0 ]; then
  recipes=(error_surface bn_activations bn_placement bn_eval_stats bn_lr_scale bn_landscape bn_batch_size cnn_vs_fc hw3_food11)
fi
for recipe in "${recipes[@]}"; do
  [ -f "recipes/$recipe.cpu.yaml" ] || { echo "reproduce_cpu: no recipes/$recipe.cpu.yaml" >&2; exit 2; }
done
# an interrupted (or killed) earlier reproduction continues; finished variants are kept either way
unfinished() {  # recipe...: has any of them a variant that did not finish?
  local recipe
  for recipe in "$@"; do
    if grep -lqsE '"status": "(running|interrupted|failed)"' "$runs_dir/$recipe"/*/status.json; then return 0; fi
  done
  return 1
}
copy_to_docs() {  # recipe: its report and figures become the committed ones
  mkdir -p "docs/$1"
  rm -f "docs/$1"/*.png
  cp "$runs_dir/$1"/*.png "$runs_dir/$1/REPORT.md" "docs/$1/"
}
record_time() {  # "what: N s" replaces the previous line for what (the file never grows), and those of $2...
  local line="$1: $2 s" drop=("-e" "^$1: ") what
  shift 2
  for what in "$@"; do drop+=("-e" "^$what: "); done
  { grep -v "${drop[@]}" docs/timings.txt 2>/dev/null || true; echo "$line"; } > docs/timings.txt.new
  mv docs/timings.txt.new docs/timings.txt
}
common=(runs_dir="$runs_dir" logger.wandb.mode=disabled)
if [ ${#jobs[@]} -gt 0 ]; then
  # one fit for every recipe: one pool of workers takes all their variants, the slowest first, so no
  # recipe's last variant leaves a core idle and the workers start once; then the reports, as many at once
  start=$(date +%s)
  resume=()
  if unfinished "${recipes[@]}"; then resume=(--ckpt last); fi
  each=()
  for recipe in "${recipes[@]}"; do each+=(--recipe "recipes/$recipe.cpu.yaml"); done
  "$PYTHON" -m cnnkit fit "${each[@]}" "${common[@]}" "${jobs[@]}" ${resume[@]+"${resume[@]}"}
  at_once="${jobs[1]}"
  [ "$at_once" != auto ] || at_once="$(nproc 2>/dev/null || echo 1)"
  for recipe in "${recipes[@]}"; do printf '%s\0' "$runs_dir/$recipe"; done |
    xargs -0 -n 1 -P "$at_once" "$PYTHON" -m cnnkit report
  took=$(( $(date +%s) - start ))
  together="${#recipes[@]} recipes together (--jobs ${jobs[1]})"
  echo "$together: $took s"
  if [ "$update_docs" = 1 ]; then
    for recipe in "${recipes[@]}"; do copy_to_docs "$recipe"; done
    record_time "$together" "$took" "${recipes[@]}"
  fi
else
  for recipe in "${recipes[@]}"; do
    start=$(date +%s)
    resume=()
    if unfinished "$recipe"; then resume=(--ckpt last); fi
    "$PYTHON" -m cnnkit fit --config "recipes/$recipe.cpu.yaml" "${common[@]}" ${resume[@]+"${resume[@]}"}
    "$PYTHON" -m cnnkit report "$runs_dir/$recipe"
    took=$(( $(date +%s) - start ))
    echo "$recipe: $took s"
    if [ "$update_docs" = 1 ]; then
      copy_to_docs "$recipe"
      record_time "$recipe" "$took" "[0-9]* recipes together (--jobs [^)]*)"
    fi
  done
fi
if [ "$update_docs" = 0 ]; then
  echo "reproduce_cpu: reports in $runs_dir/<recipe>/; docs/ unchanged (--update-docs copies them there)"
fi
