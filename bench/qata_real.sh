#!/usr/bin/env bash
# The real-data benchmark of issue 3: RecLMIS and the text-free baseline, each trained on the
# QaTa-COV19 subset under the same time budget on this machine, then evaluated on the test split
# with true, shuffled and empty notes. Results go to bench/results/qata-real-<stamp>/.
#
# Usage: [RECLMIS_TRAIN_ARGS="--config FILE …"] bench/qata_real.sh [DATA] [MINUTES_PER_MODEL]
#   DATA defaults to ../shared/data/qata-cov19 (LViT layout, 1000 / 250 / 600 images);
#   80 minutes per model keeps the whole run under 3 hours on 2 cores.
#   RECLMIS_TRAIN_ARGS: extra flags for RecLMIS's `train` only (split on whitespace, no quoting),
#   e.g. `--canonical-notes --paraphrase 0.5` or `--config bench/recipe.toml`; the baseline keeps
#   the common flags.
#   QATA_EPOCHS: an epoch cap for both models besides the time budget (default 1000, i.e. none).
#   QATA_OUT: the results folder (default bench/results/qata-real-<stamp>); a model whose run
#   folder there already holds best.safetensors and metrics.jsonl is not trained again, so a
#   run that stopped after training can be finished.
# Model: 112 px, base 16 channels, the built-in text encoder (no CLIP weights needed), the
# paper's losses and optimiser; the test split is only ever used by `evaluate`.
# Also, for RecLMIS: the test split scored with every notes file bench/wordings/*.csv
# (reclmis-wording-<suite>.{json,csv}); its best checkpoint exported as float16 and
# inference-only (reclmis-best-fp16.safetensors, kept) and evaluated, with a check against the
# float32 Dice; and summary.json (bench/summarize_qata.py, which also runs on its own).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/qata-cov19}"
minutes="${2:-80}"
read -r -a extra <<< "${RECLMIS_TRAIN_ARGS:-}"
epochs="${QATA_EPOCHS:-1000}"
stamp=$(date -u +%Y%m%d-%H%M%S)
out="${QATA_OUT:-bench/results/qata-real-$stamp}"
mkdir -p "$out"
cargo build --release -q -p reclmis-cli
bin=./target/release/reclmis
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1 || true)
python3 - "$out/bench.json" "$minutes" "$cpu" "$data" "${RECLMIS_TRAIN_ARGS:-}" "$epochs" <<'PY'
import json, sys
path, minutes, cpu, data, train_args, epochs = sys.argv[1:]
with open(path, "w") as f:
    json.dump({"minutes": float(minutes), "epochs": int(epochs), "cpu": cpu, "data": data,
               "reclmis_train_args": train_args}, f, indent=1)
    f.write("\n")
PY
common=(--data "$data" --preset qata --image-size 112 --base-channels 16 --batch-size 16
        --epochs "$epochs" --time-budget-min "$minutes")
trained() { [[ -f "$1/best.safetensors" && -f "$1/metrics.jsonl" ]]; }
if trained "$out/reclmis"; then
  echo "$out/reclmis is trained already; evaluating it"
else
  "$bin" train "${common[@]}" ${extra[@]+"${extra[@]}"} --out "$out/reclmis" 2>&1 \
    | tee "$out/reclmis-train.log"
fi
if trained "$out/baseline"; then
  echo "$out/baseline is trained already; evaluating it"
else
  "$bin" train "${common[@]}" --text-free --out "$out/baseline" 2>&1 \
    | tee "$out/baseline-train.log"
fi
# The test split's notes are LViT's originals, while train/val carry the cleaned captions (the
# data README); the same test images with the cleaned captions measure that change of style.
cleaned="$data/Test_Folder/Test_text_cleaned.csv"
for run in reclmis baseline; do
  for text in given shuffled empty; do
    "$bin" evaluate --checkpoint "$out/$run" --data "$data" --split test --text "$text" --json \
      --csv "$out/$run-test-$text.csv" | tee "$out/$run-test-$text.json"
    "$bin" evaluate --checkpoint "$out/$run" --data "$data" --split val --text "$text" --json \
      --csv "$out/$run-val-$text.csv" | tee "$out/$run-val-$text.json"
    "$bin" evaluate --checkpoint "$out/$run" --data "$data" --split test --notes "$cleaned" \
      --text "$text" --json --csv "$out/$run-test-cleaned-$text.csv" \
      | tee "$out/$run-test-cleaned-$text.json"
  done
done
# Other wordings of the test notes (one notes file per suite, whatever suites exist).
shopt -s nullglob
for notes in bench/wordings/*.csv; do
  suite=$(basename "$notes" .csv)
  "$bin" evaluate --checkpoint "$out/reclmis" --data "$data" --split test --notes "$notes" \
    --json --csv "$out/reclmis-wording-$suite.csv" | tee "$out/reclmis-wording-$suite.json"
done
shopt -u nullglob
# The same model reading each note as written (`--notes-as raw`): what canonical reading buys
# (for a model trained with notes.canonical; for one trained on raw notes it is the default).
for notes in "$data/Test_Folder/Test_text.xlsx" bench/wordings/*.csv; do
  suite=$(basename "$notes"); suite=${suite%.*}
  [[ $suite == Test_text ]] && suite=lvit
  "$bin" evaluate --checkpoint "$out/reclmis" --data "$data" --split test --notes "$notes" \
    --notes-as raw --json --csv "$out/reclmis-raw-$suite.csv" | tee "$out/reclmis-raw-$suite.json"
done
# Validation only: the validation notes reworded by the training augmentation (seed 1), read
# raw and canonical: the side-by-side on which a recipe may be chosen.
"$bin" notes "$data/Train_Folder/Train_Val_text.xlsx" --show 0 --seed 1 \
  --paraphrase-to "$out/train-val-paraphrased.csv" > /dev/null
python3 - "$data/Val_Folder/img" "$out/train-val-paraphrased.csv" "$out/val-paraphrased.csv" <<'PY'
import csv, os, sys
img, src, dst = sys.argv[1:]
keep = {("mask_" + n).lower() for n in os.listdir(img)}
rows = list(csv.reader(open(src, newline="")))
with open(dst, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(rows[0])
    w.writerows(r for r in rows[1:] if r[0].lower() in keep)
PY
rm "$out/train-val-paraphrased.csv"
for how in canonical raw; do
  "$bin" evaluate --checkpoint "$out/reclmis" --data "$data" --split val \
    --notes "$out/val-paraphrased.csv" --notes-as "$how" --json \
    --csv "$out/reclmis-val-paraphrased-$how.csv" | tee "$out/reclmis-val-paraphrased-$how.json"
done
if [[ -f bench/wordings/one_sided.txt ]]; then
  cp bench/wordings/one_sided.txt "$out/one_sided.txt"
fi
# The best RecLMIS checkpoint as a small deployable file, scored like the float32 one.
fp16="$out/reclmis-best-fp16.safetensors"
"$bin" export --checkpoint "$out/reclmis" --out "$fp16" --fp16 --inference-only
"$bin" evaluate --checkpoint "$fp16" --data "$data" --split test --text given --json \
  --csv "$out/reclmis-fp16-test-given.csv" | tee "$out/reclmis-fp16-test-given.json"
fp16_ok=0
python3 - "$out/reclmis-test-given.json" "$out/reclmis-fp16-test-given.json" "$fp16" <<'PY' \
  | tee "$out/fp16-check.txt" || fp16_ok=$?
import json, os, sys
full, half, path = sys.argv[1:]
d32 = json.load(open(full))["dice"]
d16 = json.load(open(half))["dice"]
mb = os.path.getsize(path) / 1e6
ok = abs(d16 - d32) <= 0.002 and mb < 30
print(f"fp16 inference-only check: Dice {d16:.4f} vs {d32:.4f} in float32 "
      f"(|diff| {abs(d16 - d32):.4f}, limit 0.002), file {mb:.1f} MB (limit 30): "
      + ("ok" if ok else "FAILED"))
sys.exit(0 if ok else 1)
PY
python3 bench/summarize_qata.py "$out"
# Weights are too large to record (the float16 export aside); the metrics, curves, configs and
# per-image CSVs stay.
find "$out" \( -name '*.safetensors' ! -name '*-fp16.safetensors' -o -name 'optimizer*.bin' \) \
  -delete
exit "$fp16_ok"
