#!/usr/bin/env bash
# Times the paper configuration (224 px, base 64, batch 4, all five losses, Adam) and records the
# JSON under bench/results/. Usage: bench/run_bench.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
mkdir -p bench/results
cargo build --release -q -p reclmis-cli
out="bench/results/bench-$(date -u +%Y%m%d-%H%M%S)-t${threads}.json"
./target/release/reclmis --threads "$threads" bench --json | tee "$out"
echo "recorded $out" >&2
