#!/usr/bin/env bash
# Fine-tune the demo model on a GPU machine within a fixed time, offline: how the shipped run 12 was
# made on an NVIDIA H200 lent for a few minutes (mrcnet/assets/demo/MODEL_CARD.md). In BUDGET seconds:
#  1. the offline packages (benchmarks/gpu_env.sh: prepare them with
#     bash scripts/prepare_gpu_check.sh --train [--have ...]); without .gpu-check/, the .venv
#  2. six `mrcnet-synth scenes` processes render training splits on the GPU's EGL device, in chunks of
#     CHUNK images, until RENDER_END s (chunk k of kind j is split g<j>_<k>, seed SEED0 + 100 j + k;
#     a chunk counts once finished); GPU_CHECK=1 runs benchmarks/gpu_check.py beside them
#  3. a PSTEPS-step training probe measures steps/s; then `mrcnet-train` from INIT on every finished
#     chunk, with as many epochs as the time left allows (the cosine schedule ends in time); SIGTERM
#     at the deadline keeps the last state (the trainer saves on SIGTERM)
#  4. the last checkpoint and up to NPREV earlier ones, slimmed (float16, no training state), into OUT,
#     and the logs as OUT/results.tar.gz
#
#   bash scripts/gpu_finetune_demo.sh            # settings as environment variables, defaults below
set -uo pipefail
export PYTHONUNBUFFERED=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
BUDGET=${BUDGET:-555}; RENDER_END=${RENDER_END:-100}; CHUNK=${CHUNK:-400}
INIT=${INIT:-mrcnet/assets/demo/model.pth}; SEED0=${SEED0:-0}; GPU_CHECK=${GPU_CHECK:-0}; WARM=${WARM:-100}
BATCH=${BATCH:-32}; LR=${LR:-1e-4}; WK=${WK:-14}; CKE=${CKE:-300}; DEV=${DEV:-cuda:0}; PSTEPS=${PSTEPS:-40}
NPREV=${NPREV:-4}
W=${WORK:-/tmp/mrcnet_gpu_finetune}
OUTD=${OUT:-$W/out}
mkdir -p "$W/logs" "$W/labels" "$W/keep" "$OUTD"
LOG=$W/logs
trap 'tar -czf "$OUTD/results.tar.gz" -C "$W" logs 2>/dev/null; ls -la "$OUTD"' EXIT
{ nvidia-smi; nproc; free -g; df -h "$W"; } > "$LOG/machine.txt" 2>&1
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh > "$LOG/env.txt" 2>&1
$PY -c "from mrcnet.runtime.render import Renderer; print('renderer:', Renderer().description)" 2>&1 | tail -1 | tee -a "$LOG/env.txt"
D=$W/data; mkdir -p "$D"; cp -r mrcnet/assets/demo/models "$D/models"
SYN="$PY -m mrcnet.data.cli scenes --models $D/models --out $D"
TRAIN="$PY -m mrcnet.train.cli --data $D --preset small --dataset synth --object-ids 1,2,3 --box-map exact --device $DEV -q"
slim() { $PY -c "import sys; from mrcnet.checkpoint import slim_checkpoint; slim_checkpoint(sys.argv[1], sys.argv[2])" "$1" "$2"; }

render_loop() {  # kind j, then the scenes options of that kind
  local j=$1; shift; local k=0
  while [ "$(el)" -lt "$RENDER_END" ]; do
    local s=g${j}_$k
    if $SYN --split "$s" --count "$CHUNK" --seed $((SEED0 + 100 * j + k)) "$@" > "$LOG/render_$s.txt" 2>&1; then touch "$D/$s.done"; fi
    k=$((k + 1))
  done
}
echo "[$(el)s] rendering"
render_loop 1 --objects-per-image 2 5 --layout table --lighting mixed & R1=$!
render_loop 2 --objects-per-image 1 4 --layout table --lighting mixed --object-ids 1 & R2=$!
render_loop 3 --objects-per-image 1 4 --layout random --object-ids 1 & R3=$!
render_loop 4 --objects-per-image 2 5 --layout random & R4=$!
render_loop 5 --objects-per-image 2 5 --layout table --lighting mixed & R5=$!
render_loop 6 --objects-per-image 2 5 --layout random & R6=$!
if [ "$GPU_CHECK" = 1 ]; then
  timeout 200 $PY benchmarks/gpu_check.py --out "$LOG/gc" > "$LOG/gpu_check.txt" 2>&1
  grep "gpu_check:" "$LOG/gpu_check.txt"
fi
( sleep $(( RENDER_END + 60 - $(el) > 0 ? RENDER_END + 60 - $(el) : 1 )); pkill -f "mrcnet.data.cli scenes" ) >/dev/null 2>&1 &
WATCH=$!
wait $R1 $R2 $R3 $R4 $R5 $R6
pkill -P $WATCH 2>/dev/null; kill $WATCH 2>/dev/null
SPLITS=$(cd "$D" && ls ./*.done 2>/dev/null | sed 's|^\./||; s/\.done$//' | sort -V | paste -sd,)
echo "[$(el)s] chunks: $SPLITS"
[ -n "$SPLITS" ] || { echo "gpu_finetune_demo.sh: no chunk was rendered (see $LOG/render_*.txt)" >&2; exit 1; }

mkdir -p "$W/probe"; ln -sfn "$W/labels" "$W/probe/label_cache"
timeout 120 $TRAIN --split "$SPLITS" --epochs 1000 --max-steps "$PSTEPS" --batch-size "$BATCH" --workers "$WK" --lr "$LR" \
  --warmup 20 --init "$INIT" --ckpt-every 100000 --out "$W/probe" > "$LOG/train_probe.txt" 2>&1
read -r RATE NINST < <($PY - "$W/probe/history.json" "$LOG/train_probe.txt" <<'EOF'
import json, re, sys
h = json.load(open(sys.argv[1])); w = [r["wall_s"] for r in h]; a = len(w) // 4
if len(w) < 3 or w[-1] <= w[a]:
    sys.exit(f"probe: too few steps to time ({len(w)})")
n = int(re.search(r"\((\d+) in all\)", open(sys.argv[2]).read()).group(1))
print(f"{(len(w) - 1 - a) / (w[-1] - w[a]):.3f} {n}")
EOF
)
[ -n "${RATE:-}" ] || { echo "gpu_finetune_demo.sh: the training probe failed (see $LOG/train_probe.txt)" >&2; exit 1; }
SPE=$(( NINST / BATCH ))
LEFT=$(( BUDGET - $(el) - 45 ))
EPOCHS=$($PY -c "print(max(1, int($RATE * $LEFT * 0.9 // $SPE)))")
echo "[$(el)s] probe: $RATE steps/s at batch $BATCH; $NINST instances, $SPE steps/epoch; $LEFT s left: $EPOCHS epochs" | tee "$LOG/plan.txt"

mkdir -p "$W/run"; ln -sfn "$W/labels" "$W/run/label_cache"
( last=""; while sleep 4; do [ -f "$W/run/last.pth" ] || continue; m=$(stat -c %Y "$W/run/last.pth")
  if [ "$m" != "$last" ]; then sleep 2; cp "$W/run/last.pth" "$W/keep/ck_$(date +%s).pth"; last=$m; fi; done ) >/dev/null 2>&1 &
KEEP=$!
timeout -s TERM $(( BUDGET - $(el) - 35 )) $TRAIN --split "$SPLITS" --epochs "$EPOCHS" --batch-size "$BATCH" --workers "$WK" \
  --lr "$LR" --warmup "$WARM" --init "$INIT" --ckpt-every "$CKE" --out "$W/run" > "$LOG/train.txt" 2>&1
echo "[$(el)s] training ended (rc $?)"; tail -1 "$LOG/train.txt"
sleep 1; pkill -P $KEEP 2>/dev/null; kill $KEEP 2>/dev/null
cp "$W/run/history.json" "$W/run/loss_curves.png" "$LOG/" 2>/dev/null
slim "$W/run/last.pth" "$OUTD/ck_end.pth"
i=0
for f in $(ls -r "$W"/keep/ck_*.pth | sed -n "2,$((NPREV + 1))p"); do i=$((i + 1)); slim "$f" "$OUTD/ck_prev$i.pth"; done
echo "[$(el)s] done: $OUTD"
