#!/usr/bin/env bash
# The measurement the dat.layer_scale issue asks for: what the residual wrap's LayerScale should
# start at, against no LayerScale and against the bare wrap. It chose DATSettings' default, null
# (the README has the tables).
#
#   arms:       dat.layer_scale=null (official DAT++: x + DAT(LN(x))), 1e-4 (the first default), 1.0,
#               and dat.wrap=bare (the blog: the module alone; layer_scale does not apply)
#   placements: sppf, neck          seeds: 0, 1, 2          data: synthetic, train=smoke
#   start:      from scratch (experiment layer-scale-scratch), and from a trained stock
#               checkpoint, the placement=none seed-0 run's best.pt (layer-scale-finetune);
#               each with its placement=none baseline (Δ in the reports is against it).
#
# 54 smoke jobs: per start, 3 baseline + 18 layer_scale + 6 bare. A report per sweep, then one
# per experiment (all arms in one table, the one to read). Run again after an interruption:
# finished jobs are skipped. Extra arguments go to every job (e.g. device=0).
#
# Runtime, estimated from one smoke job of each kind, timed on the development machine (2 CPU
# cores shared with other work, load ~4.5, no GPU): placement=neck 4 min 14 s, placement=none
# 3 min 0 s (12 epochs of 200 images at 160 px, val and test included). 6 stock jobs x 3 min
# + 48 DAT jobs x ≤4.2 min (sppf, one module at P5, is cheaper) + 6 reports ≈ 3.6 h on such a CPU,
# roughly 2.5 h on the same cores unshared (user time 2 min 19 s a neck job). On a GPU, much less.
# Measured: the whole script ran 1 h 51 min there (2026-12-01, beside a test run).
#
# Usage: benchmarks/layer_scale_measurement.sh [override ...]
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
SCRATCH=layer-scale-scratch
FINETUNE=layer-scale-finetune
SEEDS=seed=0,1,2
PLACEMENTS=placement=sppf,neck
SCALES=dat.layer_scale=null,1e-4,1.0
failed=0

sweep() {  # sweep EXPERIMENT OVERRIDE...: one sweep (a failed job fails it, not the script)
  local experiment=$1
  shift
  echo "== $experiment: $*"
  "$PY" -m dat_exp -m train=smoke data=synthetic tracking.experiment="$experiment" "$@" \
    "${EXTRA[@]}" || failed=1
}

report() {  # report [EXPERIMENT]: the latest sweep, or every run of the experiment
  "$PY" -m dat_exp.report "$@" || failed=1
}

EXTRA=("$@")

# -- from scratch -----------------------------------------------------------------------------
sweep "$SCRATCH" placement=none "$SEEDS"
sweep "$SCRATCH" "$PLACEMENTS" "$SEEDS" "$SCALES"
report
sweep "$SCRATCH" "$PLACEMENTS" "$SEEDS" dat.wrap=bare
report

# -- from the seed-0 stock run's best weights -------------------------------------------------
BEST=$("$PY" - "$SCRATCH" <<'EOF'
import sys

import pandas as pd

from dat_exp.analysis.load import load_runs
from dat_exp.env import runs_dir

runs = load_runs(experiment=sys.argv[1]).runs  # FINISHED runs of the newest code
seed0 = pd.to_numeric(runs["seed"], errors="coerce") == 0
stock = runs[(runs["placement"] == "none") & seed0]
if stock.empty:
    sys.exit(f"no FINISHED placement=none seed=0 run in experiment {sys.argv[1]}")
best = runs_dir().resolve() / "train" / stock["run_id"].iloc[-1] / "weights" / "best.pt"
if not best.is_file():
    sys.exit(f"{best} is missing")
print(best)
EOF
) || exit 1  # the reason is on stderr
echo "stock checkpoint: $BEST"

sweep "$FINETUNE" placement=none "$SEEDS" model.weights="$BEST"
sweep "$FINETUNE" "$PLACEMENTS" "$SEEDS" "$SCALES" model.weights="$BEST"
report
sweep "$FINETUNE" "$PLACEMENTS" "$SEEDS" dat.wrap=bare model.weights="$BEST"
report

# -- every arm in one table per start ---------------------------------------------------------
report "$SCRATCH"
report "$FINETUNE"
exit "$failed"
