#!/usr/bin/env bash
# The explanation device check (issue 18): parity of the re-entry and the hook plan on CUDA, then the
# bench_explain table on the GPU. Written for a later session with a lent GPU; about 2-3 minutes.
#
#   run(command="bash benchmarks/gpu_explain.sh", carry=[".whl"], timeout_s=240)
#
# torchcam and grad-cam may be missing on the GPU image: the benchmark then leaves their columns empty. To
# have them, build .whl/ here first (ignored by git):
#   pip download --no-deps --only-binary=:all: -d .whl torchcam==0.5.0 ttach==0.0.3
#   .venv/bin/pip wheel --no-deps grad-cam==1.5.7 -w .whl
#
# Each step runs under `timeout` and never past DEADLINE_S; a failed step prints "STEP FAILED rc=N" and the
# next runs. Output: $OUT/gpu_explain.log, $OUT/parity.json, $OUT/explain_gpu.json (and parity.py).

set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-explain}
PY=${PY:-python3}
DEADLINE_S=${DEADLINE_S:-200}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_explain.log") 2>&1
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg TRAITLENS_QUIET=1 TRAITLENS_CACHE=/tmp/traitlens-cache
export PYTHONPATH="$PWD/src"
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PWD/src" || echo "WHEEL INSTALL FAILED rc=$?"
fi
echo "== $(date -u +%FT%TZ) $(hostname)"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || echo "no nvidia-smi"

START=$(date +%s)
step() {  # step NAME BUDGET_S COMMAND...
    local name=$1 budget=$2
    shift 2
    local left=$((START + DEADLINE_S - $(date +%s)))
    ((budget > left)) && budget=$left
    if ((budget < 10)); then echo "== SKIPPED $name: the deadline is reached"; return; fi
    echo "== $(date -u +%T) $name (budget ${budget}s)"
    local t0=$(date +%s)
    timeout -k 5 "$budget" "$@" || echo "STEP FAILED rc=$? ($name)"
    echo "== $name took $(($(date +%s) - t0))s"
}

# (a) on CUDA, random-weight ResNet-50 / ViT-S/16 / ViT-B/16 at 224 px, batch 8: the re-entry's maps equal the
#     hook plan's, the single map equals its slot in a sweep, LeGrad runs; fails (rc 1) past the tolerances.
cat > "$OUT/parity.py" <<'EOF'
import json, sys, timm, torch
from traitlens.explain import explain
dev = torch.device("cuda")
torch.backends.cudnn.allow_tf32 = False  # both plans must see the same arithmetic
rows, ok = [], True
for name in ("resnet50", "vit_small_patch16_224", "vit_base_patch16_224"):
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=200).to(dev).eval()
    x = torch.randn(8, 3, 224, 224, device=dev)
    fast = explain(m, x, alpha=[0.0, 0.6, 1.0], weights="uniform")
    hook = explain(m, x, alpha=[0.0, 0.6, 1.0], weights="uniform", reentry=False)
    one = explain(m, x, alpha=0.6, weights="uniform")
    scale = float(hook.raw_maps.abs().max())
    row = {"model": name, "plan": fast.extras["plan"],
           "raw_rel": float((fast.raw_maps - hook.raw_maps).abs().max()) / scale,
           "maps": float((fast.maps - hook.maps).abs().max()),
           "logits": float((fast.logits - hook.logits).abs().max()),
           "refs_equal": bool(torch.equal(fast.references, hook.references)),
           "single_vs_sweep": float((one.raw_maps - fast.raw_maps[1]).abs().max()) / scale}
    if name.startswith("vit"):
        lg = explain(m, x, method="legrad", alpha=[0.0, 0.6])
        row["legrad_max"] = float(lg.maps.max())
    ok &= row["raw_rel"] < 1e-4 and row["maps"] < 1e-3 and row["refs_equal"] and row["single_vs_sweep"] < 1e-4
    rows.append(row)
    print(row, flush=True)
json.dump({"device": torch.cuda.get_device_name(0), "rows": rows, "ok": bool(ok)}, open(sys.argv[1], "w"), indent=1)
sys.exit(0 if ok else 1)
EOF
step parity 60 $PY "$OUT/parity.py" "$OUT/parity.json"
# (b) the benchmark table: one map ÷ forward, ÷ torchcam, ÷ grad-cam, sweep, peak memory, batch 8 and 32
step bench 130 $PY benchmarks/bench_explain.py --device cuda --batch 8,32 --repeats 10 \
    --json "$OUT/explain_gpu.json"
echo "== done in $(($(date +%s) - START))s; files: $(ls "$OUT" | tr '\n' ' ')"
sleep 1
