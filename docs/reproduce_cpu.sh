#!/usr/bin/env bash
# Re-run every recipe's reduced-scale version on this CPU and refresh the committed figures:
#   bash docs/reproduce_cpu.sh [recipe ...]      (default: all)
# Each run lands in runs/<recipe>/; its report (PNG figures + REPORT.md) is copied to docs/<recipe>/.
set -euo pipefail
cd "$(dirname "$0")/.."
recipes=("$@")
if [ ${#recipes[@]} -eq 0 ]; then
  recipes=(error_surface bn_activations bn_placement bn_eval_stats bn_lr_scale bn_landscape bn_batch_size cnn_vs_fc hw3_food11)
fi
for recipe in "${recipes[@]}"; do
  start=$(date +%s)
  rm -rf "runs/$recipe"
  python -m cnnkit fit --config "recipes/$recipe.cpu.yaml" logger.wandb.mode=disabled
  python -m cnnkit report "runs/$recipe"
  mkdir -p "docs/$recipe"
  rm -f "docs/$recipe"/*.png
  cp "runs/$recipe"/*.png "runs/$recipe/REPORT.md" "docs/$recipe/"
  # one line per recipe: this run's time replaces the recipe's previous line (the file never grows)
  line="$recipe: $(( $(date +%s) - start )) s"
  echo "$line"
  { grep -v "^$recipe: " docs/timings.txt 2>/dev/null || true; echo "$line"; } > docs/timings.txt.new
  mv docs/timings.txt.new docs/timings.txt
done
