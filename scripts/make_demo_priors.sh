#!/usr/bin/env bash
# Reproduce the bundled demo priors (dposer_cli/assets/demo/*.pt) from ../shared/data on a CPU.
# Usage: scripts/make_demo_priors.sh [RUNS_DIR]   (about 25 min on 2 cores; a GPU makes it minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
S=${DPOSER_SHARED_DATA:-../shared/data}
RUNS=${1:-runs/demo}
DPOSER=${DPOSER:-.venv/bin/dposer}
COMMON=(--batch-size 512 --lr 1e-3 --warmup 200 --dropout 0 --no-sigma-scaling --gaussian-skip --val-every 1000
        --ckpt-every 1000 --half --seed 0)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

$DPOSER train --part body --steps 5000 "${COMMON[@]}" --out "$RUNS/body" \
  --data "$S/poses/body_reference_train.npz" --data "$S/official/examples/toy_body_data.npz" &
$DPOSER train --part hand --steps 5000 "${COMMON[@]}" --out "$RUNS/hand" \
  --data "$S/poses/hand_reference_train.npz" --data "$S/official/examples/toy_hand_data.npz" &
$DPOSER train --part face --steps 4000 "${COMMON[@]}" --out "$RUNS/face" \
  --data "$S/poses/face_expression_reference_train.npz" --data "$S/official/examples/toy_face_data.npz" &
$DPOSER train --part face-shape --steps 2500 "${COMMON[@]}" --out "$RUNS/face-shape" \
  --data "$S/poses/face_shape_reference_train.npz" --data "$S/official/examples/toy_face_data.npz" &
wait
# whole-body: frozen demo part priors + a MaskFC residual trained on mixed data (spec §2.4, §10.3)
$DPOSER train --part wholebody --steps 2000 "${COMMON[@]}" --out "$RUNS/wholebody" \
  --body-prior "$RUNS/body/prior.pt" --hand-prior "$RUNS/hand/prior.pt" --face-prior "$RUNS/face/prior.pt" \
  --data "$S/official/examples/toy_wholebody_data.npz" --data "$S/poses/body_reference_train.npz" \
  --data "$S/poses/hand_reference_train.npz" --data "$S/poses/face_expression_reference_train.npz"
for p in body hand face face-shape wholebody; do cp "$RUNS/$p/prior.pt" "dposer_cli/assets/demo/$p.pt"; done
