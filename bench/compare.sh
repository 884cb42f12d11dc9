#!/usr/bin/env bash
# Times the paper configuration (224 px, base 64, batch 4, all five losses, Adam) in reclmis and
# in the PyTorch reference bench/torch_reference.py (fp32, then bf16 autocast), back to back with
# the same thread count, records the three JSON files under bench/results/compare-<stamp>/ and
# prints torch/reclmis for every time and the peak memory (above 1: reclmis is faster / smaller).
#
# Usage: bench/compare.sh [THREADS] [STEPS]      (defaults 2 and 3)
#   PYTHON   interpreter that can import torch and numpy (default python3)
#   RECLMIS  reclmis binary (default target/release/reclmis, else cargo run --release)
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
steps="${2:-3}"
py="${PYTHON:-python3}"

if ! "$py" -c "import torch, numpy" >/dev/null 2>&1; then
  cat >&2 <<EOF
compare.sh: '$py' cannot import torch and numpy, so there is nothing to compare against.
PyTorch is optional tooling used only by bench/torch_reference.py. Install it outside the
project and point PYTHON at that interpreter, for example:
  python3 -m venv torchenv && torchenv/bin/pip install torch numpy safetensors
  PYTHON=torchenv/bin/python bench/compare.sh $threads
EOF
  exit 2
fi

if [[ -n "${RECLMIS:-}" ]]; then
  ours=("$RECLMIS")
elif [[ -x target/release/reclmis ]]; then
  ours=(target/release/reclmis)
else
  ours=(cargo run --release -q -p reclmis-cli --)
fi

dir="bench/results/compare-$(date -u +%Y%m%d-%H%M%S)-t${threads}"
mkdir -p "$dir"
echo "reclmis bench (threads $threads, steps $steps)..." >&2
"${ours[@]}" --threads "$threads" bench --json --steps "$steps" >"$dir/reclmis.json"
echo "pytorch fp32..." >&2
"$py" bench/torch_reference.py --bench --threads "$threads" --steps "$steps" --json >"$dir/torch-fp32.json"
echo "pytorch bf16..." >&2
"$py" bench/torch_reference.py --bench --threads "$threads" --steps "$steps" --json --bf16 >"$dir/torch-bf16.json"

"$py" - "$dir" <<'EOF' | tee "$dir/table.txt"
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
ours = json.loads((d / "reclmis.json").read_text())
runs = [(f"{r['backend']} {r['precision']}", r) for r in
        (json.loads((d / f).read_text()) for f in ("torch-fp32.json", "torch-bf16.json"))]
print(f"threads {ours['threads']} (reclmis) / {', '.join(str(r['threads']) for _, r in runs)} (torch)")
label = f"{ours['backend']} {ours['precision']}" + (f" ({ours['kernels']} kernels)" if "kernels" in ours else "")
w = max(24, len(label))
head = f"{'':<14} {label:>{w}}"
for name, _ in runs:
    head += f" {name:>28} {'ratio':>6}"
print(head)
for key in ("train_step_s", "infer_b1_s", "infer_b4_s", "peak_rss_mb"):
    line = f"{key:<14} {ours[key]:>{w}.3f}"
    for _, r in runs:
        line += f" {r[key]:>28.3f} {r[key] / ours[key]:>6.2f}"
    print(line)
print("ratio = torch / reclmis: above 1 means reclmis is faster (or uses less memory)")
EOF
echo "recorded $dir" >&2
