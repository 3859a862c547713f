#!/usr/bin/env bash
# Reproduce every number in docs/commentaries.md (about 15 minutes on two CPU cores).
# Usage: bash plugins/commentaries/experiments/run_all.sh [OUT_DIR]   (default: runs/)
set -euo pipefail
OUT=${1:-runs}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
log() { echo; echo "### $*"; }

log "blending, learned with the paper's estimator (IFT, Neumann K=1), reused on CNN students"
commentaries --quiet learn blending --dataset digits --method ift --solver neumann \
  --neumann-terms 1 --student mlp --steps 300 --seed 0 --out "$OUT/blending"
commentaries --quiet train --commentary "$OUT/blending" --student cnn --seeds 5 --steps 1500
commentaries show "$OUT/blending"

log "blending, learned with other solvers"
commentaries --quiet learn blending --dataset digits --method ift --solver identity \
  --student mlp --steps 300 --seed 0 --out "$OUT/blending-identity"
commentaries --quiet train --commentary "$OUT/blending-identity" --student cnn --seeds 5 --steps 1500
commentaries --quiet learn blending --dataset digits --method ift --solver cg --cg-iters 10 \
  --cg-damping 1.0 --student mlp --steps 300 --seed 0 --out "$OUT/blending-cg"
commentaries --quiet train --commentary "$OUT/blending-cg" --student cnn --seeds 5 --steps 1500

log "weighting, Algorithm 1 (unrolled, 50 SGD steps), paper's unnormalized weights"
commentaries --quiet learn weighting --dataset digits --method unroll --student mlp \
  --inner-steps 50 --steps 100 --seed 0 --out "$OUT/weighting"
commentaries --quiet train --commentary "$OUT/weighting" --student cnn --seeds 5 --steps 1500
commentaries show "$OUT/weighting"

log "weighting, Algorithm 1, normalized weights (curriculum only, no learning-rate scale)"
commentaries --quiet learn weighting --set normalize=true --dataset digits --method unroll \
  --student mlp --inner-steps 50 --steps 100 --seed 0 --out "$OUT/weighting-normalized"
commentaries --quiet train --commentary "$OUT/weighting-normalized" --student cnn --seeds 5 --steps 1500
commentaries show "$OUT/weighting-normalized"

log "weighting, Algorithm 2 (IFT, Neumann K=1)"
commentaries --quiet learn weighting --dataset digits --method ift --student mlp --steps 500 \
  --seed 0 --out "$OUT/weighting-ift"
commentaries --quiet train --commentary "$OUT/weighting-ift" --student cnn --seeds 5 --steps 1500

log "weighting on the overlapping two-class task"
commentaries --quiet learn weighting --dataset digits-binary-overlap --method unroll \
  --student mlp --inner-steps 50 --steps 100 --seed 0 --out "$OUT/weighting-overlap"
commentaries --quiet train --commentary "$OUT/weighting-overlap" --student cnn --seeds 5 --steps 500
commentaries show "$OUT/weighting-overlap"

log "how far the one-term Neumann hypergradient is from the exact one"
python "$(dirname "$0")/solver_agreement.py" linear
python "$(dirname "$0")/solver_agreement.py" mlp
