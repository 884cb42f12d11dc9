#!/usr/bin/env bash
# Bounded cargo-fuzz runs of every reader of untrusted bytes (fuzz/fuzz_targets/), recorded under
# bench/results/fuzz-<stamp>/: one log per target and summary.json (runs, crashes, artifacts).
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); the mutation test in
# crates/reclmis/tests/mutation.rs is the stable, CI-run counterpart.
#
# Usage: [FUZZ_TARGETS="t1 t2"] bench/fuzz.sh [SECONDS_PER_TARGET]   (default 60; all targets)
# Seeds: fuzz/corpus/<target>/ (small, in the repository) plus, for the binary formats, the real
# files of the shared folder (RECLMIS_SHARED, default ../shared), copied to a scratch corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shared="${RECLMIS_SHARED:-../shared}"
stamp=$(date -u +%Y%m%d-%H%M%S)
out="bench/results/fuzz-$stamp"
mkdir -p "$out"
lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1 > "$out/cpu.txt" || true
cargo +nightly fuzz build -O --fuzz-dir fuzz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seed() { mkdir -p "$work/$1"; cp "$2" "$work/$1/"; }
seed torch_archive "$shared/reference/official-parity/qata/best_model-RecLMIS.pth.tar"
seed torchscript "$shared/reference/clip-formats/ViT-tiny.pt"
seed hf_clip "$shared/reference/clip-formats/hf/model.safetensors"
seed notes_xlsx "$shared/data/qata-cov19/Test_Folder/Test_text.xlsx"
seed png "$(ls "$shared"/data/qata-cov19/Test_Folder/img/*.png | head -n 1)"
# A tiny checkpoint of ours, trained for one epoch on eight synthetic images.
cargo build --release -q -p reclmis-cli
./target/release/reclmis synth --out "$work/synth" --n 12 --size 32 > /dev/null
printf '[model]\nrec_layers = 1\n' > "$work/tiny.toml"
./target/release/reclmis train --data "$work/synth" --config "$work/tiny.toml" --image-size 32 \
  --base-channels 8 --epochs 1 --batch-size 8 --out "$work/run" > /dev/null 2>&1
mkdir -p "$work/ours" "$work/notes_csv" "$work/tokenizer" "$work/dicom" "$work/nifti"
cp "$work/run/best.safetensors" "$work/ours/"
# FUZZ_TARGETS="dicom nifti" runs only those.
read -r -a targets <<< "${FUZZ_TARGETS:-torch_archive torchscript hf_clip ours notes_xlsx notes_csv png dicom nifti tokenizer}"
for t in "${targets[@]}"; do
  corpus=("$work/$t")
  [[ -d fuzz/corpus/$t ]] && corpus+=("fuzz/corpus/$t")
  echo "== $t ($secs s)"
  cargo +nightly fuzz run -O --fuzz-dir fuzz "$t" "$work/$t" ${corpus[1]+"${corpus[1]}"} -- \
    -max_total_time="$secs" -rss_limit_mb=4096 -timeout=20 -artifact_prefix="$out/$t-" \
    > "$out/$t.log" 2>&1 || echo "   $t stopped with a finding; see $out/$t.log"
  tail -n 2 "$out/$t.log"
done
python3 - "$out" "${targets[@]}" <<'PY'
import json, os, re, sys
out, targets = sys.argv[1], sys.argv[2:]
summary = {}
for t in targets:
    log = open(os.path.join(out, f"{t}.log"), errors="replace").read()
    done = re.findall(r"Done (\d+) runs in (\d+) second", log)
    stats = re.findall(r"#(\d+)\s+(?:pulse|NEW|REDUCE|DONE)", log)
    runs = int(done[-1][0]) if done else (int(stats[-1]) if stats else None)
    artifacts = sorted(f for f in os.listdir(out) if f.startswith(f"{t}-"))
    summary[t] = {"runs": runs, "crashes": len(artifacts), "artifacts": artifacts,
                  "finding": None if not artifacts else log.strip().splitlines()[-12:]}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
    f.write("\n")
print(json.dumps({t: {k: v[k] for k in ("runs", "crashes")} for t, v in summary.items()}))
PY
