#!/usr/bin/env bash
# Times the paper configuration (224 px, base 64, batch 4, all five losses, Adam) in reclmis and
# in the PyTorch reference bench/torch_reference.py (fp32, then bf16 autocast), back to back with
# the same thread count, records the three JSON files under bench/results/compare-<stamp>/ and
# prints torch/reclmis for every time and the peak memory (above 1: reclmis is faster / smaller),
# for reclmis in fp32 and with --precision bf16.
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
echo "reclmis bench, --precision bf16..." >&2
"${ours[@]}" --threads "$threads" --precision bf16 bench --json --steps "$steps" >"$dir/reclmis-bf16.json"
echo "pytorch fp32..." >&2
"$py" bench/torch_reference.py --bench --threads "$threads" --steps "$steps" --json >"$dir/torch-fp32.json"
echo "pytorch bf16..." >&2
"$py" bench/torch_reference.py --bench --threads "$threads" --steps "$steps" --json --bf16 >"$dir/torch-bf16.json"

"$py" - "$dir" <<'EOF' | tee "$dir/table.txt"
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
load = lambda f: json.loads((d / f).read_text())
ours, ours16, tf32, tbf16 = (load(f) for f in
                             ("reclmis.json", "reclmis-bf16.json", "torch-fp32.json", "torch-bf16.json"))
print(f"cpu: {ours.get('cpu', '?')}")
print(f"threads: reclmis {ours['threads']}, torch {tf32['threads']}; {ours['backend']}, "
      f"{ours.get('kernels', '?')} kernels ({ours.get('isa', '?')}); {tf32['backend']} "
      f"({tf32.get('isa', '?')}, oneDNN {tf32.get('onednn_isa', '?')})")
print(f"reclmis bf16 run: {ours16['precision']}")
cols = [("reclmis fp32", ours), ("reclmis bf16", ours16), ("torch fp32", tf32), ("torch bf16", tbf16)]
print(f"{'':<14}" + "".join(f"{n:>14}" for n, _ in cols)
      + f"{'tf32/ours32':>13}{'tf32/ours16':>13}{'tbf16/ours16':>14}")
for key in ("train_step_s", "infer_b1_s", "infer_b4_s", "peak_rss_mb"):
    print(f"{key:<14}" + "".join(f"{r[key]:>14.3f}" for _, r in cols)
          + f"{tf32[key] / ours[key]:>13.2f}{tf32[key] / ours16[key]:>13.2f}"
          + f"{tbf16[key] / ours16[key]:>14.2f}")
print("ratios: torch / reclmis; above 1 means reclmis is faster (or uses less memory)")
EOF
echo "recorded $dir" >&2
