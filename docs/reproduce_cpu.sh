#!/usr/bin/env bash
# Re-run every recipe's reduced-scale version on this CPU:
#   bash docs/reproduce_cpu.sh [--jobs N|auto] [--update-docs] [recipe ...]      (default: every recipe)
# Its runs live in runs/reproduce_cpu/<recipe>/, apart from yours under runs/<recipe>/ (nothing of yours
# is touched or deleted). Finished runs are kept, so a rerun trains only what is missing, and interrupted
# ones resume. Each recipe's report (PNG figures + REPORT.md) is written beside its runs; --update-docs
# also copies it to docs/<recipe>/ and records the recipe's wall time in docs/timings.txt (the committed
# figures): without it the tracked tree is left as it is. --jobs trains that many variants at once
# (cnnkit fit --jobs: a worker process per core taking the next variant; auto picks from the machine).
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
for recipe in "${recipes[@]}"; do
  start=$(date +%s)
  resume=()
  # an interrupted (or killed) earlier reproduction continues; finished variants are kept either way
  if grep -lqsE '"status": "(running|interrupted|failed)"' "$runs_dir/$recipe"/*/status.json; then
    resume=(--ckpt last)
  fi
  "$PYTHON" -m cnnkit fit --config "recipes/$recipe.cpu.yaml" runs_dir="$runs_dir" logger.wandb.mode=disabled \
    ${jobs[@]+"${jobs[@]}"} ${resume[@]+"${resume[@]}"}
  "$PYTHON" -m cnnkit report "$runs_dir/$recipe"
  line="$recipe: $(( $(date +%s) - start )) s"
  echo "$line"
  if [ "$update_docs" = 1 ]; then
    mkdir -p "docs/$recipe"
    rm -f "docs/$recipe"/*.png
    cp "$runs_dir/$recipe"/*.png "$runs_dir/$recipe/REPORT.md" "docs/$recipe/"
    # one line per recipe: this run's time replaces the recipe's previous line (the file never grows)
    { grep -v "^$recipe: " docs/timings.txt 2>/dev/null || true; echo "$line"; } > docs/timings.txt.new
    mv docs/timings.txt.new docs/timings.txt
  fi
done
if [ "$update_docs" = 0 ]; then
  echo "reproduce_cpu: reports in $runs_dir/<recipe>/; docs/ unchanged (--update-docs copies them there)"
fi
