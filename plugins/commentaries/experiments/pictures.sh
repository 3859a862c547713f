#!/usr/bin/env bash
# The label-noise figures and numbers of docs/commentaries.md and the mask figures of
# docs/masks.md (about 18 minutes of wall clock and 12 of CPU time on two busy CPU cores).
# Usage: bash plugins/commentaries/experiments/pictures.sh [OUT_DIR] [ASSETS_DIR]
#        (defaults: runs/ and docs/assets/commentaries/; run from the repository root)
set -euo pipefail
OUT=${1:-runs}
ASSETS=${2:-docs/assets/commentaries}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT" "$ASSETS"
log() { echo; echo "### $*"; }

# Weighting on digits-noisy (20% of the training labels flipped, validation and test clean):
# two teachers x two losses, at the page's settings (100 meta-steps, meta-lr 1e-3) and with
# three times the meta-steps at ten times the meta-learning rate. `show` prints how many of
# the 16 lowest-weighted training examples are mislabeled and the AUC.
noisy() {
  local name=$1
  shift
  log "weighting on digits-noisy: $name"
  commentaries --quiet learn weighting --dataset digits-noisy --method unroll --student mlp \
    --inner-steps 50 --seed 0 "$@" --overwrite --out "$OUT/$name"
  commentaries show "$OUT/$name"
}
noisy noisy-conv --steps 100
noisy noisy-conv-normalized --set normalize=true --steps 100
noisy noisy-mlp --set teacher=mlp --steps 100
noisy noisy-mlp-normalized --set teacher=mlp --set normalize=true --steps 100
noisy noisy-conv-long --steps 300 --meta-lr 1e-2
noisy noisy-conv-normalized-long --set normalize=true --steps 300 --meta-lr 1e-2
noisy noisy-mlp-long --set teacher=mlp --steps 300 --meta-lr 1e-2
noisy noisy-mlp-normalized-long --set teacher=mlp --set normalize=true --steps 300 --meta-lr 1e-2
cp "$OUT/noisy-conv/weights-examples.png" "$ASSETS/weights-noisy-conv-examples.png"
cp "$OUT/noisy-mlp-long/weights-examples.png" "$ASSETS/weights-noisy-examples.png"
cp "$OUT/noisy-mlp-long/weights.png" "$ASSETS/weights-noisy.png"

log "reuse of the two long-learned MLP teachers on CNN students trained on the noisy labels"
for name in noisy-mlp-long noisy-mlp-normalized-long; do
  commentaries --quiet train --commentary "$OUT/$name" --student cnn --seeds 3 --steps 1500
done

log "masks on the cluttered canvas (the command of docs/masks.md, seed 0)"
commentaries --quiet learn masks --dataset cluttered --student mlp --student-steps 300 \
  --steps 900 --overwrite --out "$OUT/masks"
commentaries show "$OUT/masks"
cp "$OUT/masks/masks.png" "$OUT/masks/masked-inputs.png" "$ASSETS/"
