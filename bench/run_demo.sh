#!/usr/bin/env bash
# Runs `reclmis demo` with its defaults, timing the whole command, and records report.json under
# bench/results/. Usage: bench/run_demo.sh [extra demo flags]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
cargo build --release -q -p reclmis-cli
out=$(mktemp -d)
start=$(date +%s)
./target/release/reclmis demo --out "$out/demo" "$@"
end=$(date +%s)
stamp=$(date -u +%Y%m%d-%H%M%S)
cp "$out/demo/report.json" "bench/results/demo-$stamp.json"
echo "demo wall time: $((end - start)) s (flags: $*)" | tee "bench/results/demo-$stamp.txt"
