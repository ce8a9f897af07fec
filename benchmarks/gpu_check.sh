#!/usr/bin/env bash
# One device check: the CUDA tests and the GPU benchmarks, in one call of at most 7 minutes.
#
# The device-tool call (wheels for grad-cam and ttach, which the GPU image lacks, travel in .whl/):
#
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=420)
#
# Build .whl/ here first (it is ignored by git):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl ttach==0.0.3
#   .venv/bin/pip wheel --no-deps grad-cam==1.5.7 -w .whl      # grad-cam has no wheel on PyPI
#
# The steps run in order, each under `timeout` with its own budget and never past a common deadline
# (DEADLINE_S after the steps start), so one hung step cannot eat the others' time; a failed step is
# logged as "STEP FAILED rc=N" and the next one runs. Everything goes to $OUT/gpu_check.log; results to
# $OUT/pytest.xml, $OUT/prompt_cam.{json,png}, $OUT/explain.json, $OUT/segment.json,
# $OUT/ausuc_cuda.json and $OUT/ausuc_cpu.json (8 files: the most the tool brings back).
# Locally (no GPU): PY=.venv/bin/python OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh runs the same
# steps; the CUDA tests skip and the benchmarks fail at their first CUDA call.

set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
PY=${PY:-python3}
DEADLINE_S=${DEADLINE_S:-380}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg TRAITLENS_QUIET=1
export TRAITLENS_CACHE=/tmp/traitlens-cache
export PYTHONPATH="$PWD/src"
if ls .whl/*.whl >/dev/null 2>&1; then
    echo "== installing carried wheels: $(ls .whl)"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PWD/src" || echo "WHEEL INSTALL FAILED rc=$?"
fi

echo "== $(date -u +%FT%TZ) $(hostname)"
nvidia-smi || echo "no nvidia-smi"
$PY - <<'EOF' || echo "STEP FAILED rc=$? (environment)"
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
for name in ("traitlens", "timm", "transformers", "safetensors", "numpy", "pytorch_grad_cam", "ttach", "pytest"):
    try:
        m = importlib.import_module(name)
        print(f"  {name} {getattr(m, '__version__', '?')} {getattr(m, '__file__', '')}")
    except Exception as exc:
        print(f"  {name} MISSING: {exc!r}")
EOF

START=$(date +%s)
step() {  # step NAME BUDGET_S COMMAND...
    local name=$1 budget=$2
    shift 2
    local left=$((START + DEADLINE_S - $(date +%s)))
    ((budget > left)) && budget=$left
    if ((budget < 10)); then
        echo "== SKIPPED $name: the deadline is reached"
        return
    fi
    echo "== $(date -u +%T) $name (budget ${budget}s): $*"
    local t0=$(date +%s)
    timeout -k 5 "$budget" "$@" || echo "STEP FAILED rc=$? ($name)"
    echo "== $name took $(($(date +%s) - t0))s"
}

# (a) the CUDA tests (seconds each; --maxfail rather than -x: one run should report every failure)
PYTEST_TIMEOUT=()
$PY -c "import pytest_timeout" 2>/dev/null && PYTEST_TIMEOUT=(--timeout=90)
step pytest 150 $PY -m pytest -q tests/gpu -p no:cacheprovider --maxfail=10 -rfEs "${PYTEST_TIMEOUT[@]}" \
    --junitxml="$OUT/pytest.xml"
# (b) Prompt-CAM vs the backbone, ViT-S/16 224 px, batch 64, bf16, C = 10, 200, 1000
step prompt_cam 90 $PY benchmarks/bench_prompt_cam.py --device cuda --batch 64 --repeats 20 \
    --classes 10 200 1000 --out "$OUT"
# (c) the CAM engine vs grad-cam, ResNet-50 and ViT-S/16, 224 px, batch 32
step explain 90 $PY benchmarks/bench_explain.py --device cuda --batch 32 --batches 5 --json "$OUT/explain.json"
# (d) label propagation at 256 and 512 px (work size 128), then SAM 2 random weights (hiera-tiny shape, 1024 px)
step segment 120 $PY benchmarks/bench_segment.py --device cuda --sizes 256,512 --n 100 --sam2 --sam2-n 50 \
    --json "$OUT/segment.json"
# (e) exact AUSUC of 1,000,000 × 1,000 logits on the GPU, then on the CPU for comparison
step ausuc_cuda 60 $PY benchmarks/bench_ausuc.py --device cuda --json "$OUT/ausuc_cuda.json"
step ausuc_cpu 60 $PY benchmarks/bench_ausuc.py --device cpu --json "$OUT/ausuc_cpu.json"

echo "== done in $(($(date +%s) - START))s; files: $(ls "$OUT" | tr '\n' ' ')"
sleep 1  # let tee write the last lines
