#!/usr/bin/env bash
# Times the paper configuration (224 px, base 64, batch 4, all five losses, Adam) three ways back
# to back on the same cores: burn's generic conv/BatchNorm ops (before), our kernels in fp32
# (after), and our kernels with --precision bf16. Records the JSON under
# bench/results/bench-<stamp>-t<THREADS>/ and prints a side-by-side table.
# Usage: bench/run_bench.sh [THREADS] [STEPS]    (defaults 2 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
steps="${2:-3}"
cargo build --release -q -p reclmis-cli
bin=./target/release/reclmis
dir="bench/results/bench-$(date -u +%Y%m%d-%H%M%S)-t${threads}"
mkdir -p "$dir"
"$bin" --threads "$threads" bench --json --steps "$steps" --kernels burn >"$dir/burn.json"
"$bin" --threads "$threads" bench --json --steps "$steps" >"$dir/ours.json"
"$bin" --threads "$threads" --precision bf16 bench --json --steps "$steps" >"$dir/ours-bf16.json"
python3 - "$dir" <<'EOF' | tee "$dir/table.txt"
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
runs = [(n, json.loads((d / f).read_text())) for n, f in
        (("burn ops", "burn.json"), ("ours fp32", "ours.json"), ("ours bf16", "ours-bf16.json"))]
print(f"threads {runs[0][1]['threads']}; bf16 run: {runs[2][1]['precision']}")
print(f"{'':<14}" + "".join(f"{n:>12}" for n, _ in runs) + f"{'burn/fp32':>11}{'burn/bf16':>11}")
for key in ("train_step_s", "infer_b1_s", "infer_b4_s", "peak_rss_mb"):
    v = [r[key] for _, r in runs]
    print(f"{key:<14}" + "".join(f"{x:>12.3f}" for x in v) + f"{v[0] / v[1]:>11.2f}{v[0] / v[2]:>11.2f}")
EOF
echo "recorded $dir" >&2
