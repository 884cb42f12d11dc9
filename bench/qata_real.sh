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
# The test split's notes are LViT's originals, while train/val carry the cleaned captions (the
# data README); the same test images with the cleaned captions measure that change of style.
clean="$out/test-cleaned-notes"
mkdir -p "$clean/Test_Folder"
ln -s "$(realpath "$data/Test_Folder/img")" "$clean/Test_Folder/img"
ln -s "$(realpath "$data/Test_Folder/labelcol")" "$clean/Test_Folder/labelcol"
cp "$data/Test_Folder/Test_text_cleaned.csv" "$clean/Test_Folder/Test_text.csv"
for run in reclmis baseline; do
  for text in given shuffled empty; do
    "$bin" evaluate --checkpoint "$out/$run" --data "$data" --split test --text "$text" --json \
      --csv "$out/$run-test-$text.csv" | tee "$out/$run-test-$text.json"
    "$bin" evaluate --checkpoint "$out/$run" --data "$data" --split val --text "$text" --json \
      --csv "$out/$run-val-$text.csv" | tee "$out/$run-val-$text.json"
    "$bin" evaluate --checkpoint "$out/$run" --data "$clean" --split test --text "$text" --json \
      --csv "$out/$run-test-cleaned-$text.csv" | tee "$out/$run-test-cleaned-$text.json"
  done
done
rm -r "$clean"
# Weights are too large to record; the metrics, curves, configs and per-image CSVs stay.
find "$out" \( -name '*.safetensors' -o -name optimizer.bin \) -delete
