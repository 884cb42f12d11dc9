#!/usr/bin/env bash
# The real-data benchmark of issue 3: RecLMIS and the text-free baseline, each trained on the
# QaTa-COV19 subset under the same time budget on this machine, then evaluated on the test split
# with true, shuffled and empty notes. Results go to bench/results/qata-real-<stamp>/.
#
# Usage: bench/qata_real.sh [DATA] [MINUTES_PER_MODEL]
#   DATA defaults to ../shared/data/qata-cov19 (LViT layout, 1000 / 250 / 600 images);
#   80 minutes per model keeps the whole run under 3 hours on 2 cores.
# Model: 112 px, base 16 channels, the built-in text encoder (no CLIP weights needed), the
# paper's losses and optimiser; the test split is only ever used by `evaluate`.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/qata-cov19}"
minutes="${2:-80}"
stamp=$(date -u +%Y%m%d-%H%M%S)
out="bench/results/qata-real-$stamp"
mkdir -p "$out"
cargo build --release -q -p reclmis-cli
bin=./target/release/reclmis
common=(--data "$data" --preset qata --image-size 112 --base-channels 16 --batch-size 16
        --epochs 1000 --time-budget-min "$minutes")
"$bin" train "${common[@]}" --out "$out/reclmis" 2>&1 | tee "$out/reclmis-train.log"
"$bin" train "${common[@]}" --text-free --out "$out/baseline" 2>&1 | tee "$out/baseline-train.log"
for run in reclmis baseline; do
  for text in given shuffled empty; do
    "$bin" evaluate --checkpoint "$out/$run" --data "$data" --split test --text "$text" --json \
      --csv "$out/$run-test-$text.csv" | tee "$out/$run-test-$text.json"
  done
done
# Weights are too large to record; the metrics, curves, configs and per-image CSVs stay.
find "$out" \( -name '*.safetensors' -o -name optimizer.bin \) -delete
