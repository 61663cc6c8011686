#!/usr/bin/env bash
# The issue-19 GPU queue that is still to run (experiments/gpu_plan_19.md), for a GPU machine
# whose commands are cut after a few minutes: each call runs what is not done for WAIT
# seconds at most, then copies what exists into OUT. Run it again, on
# the same machine or a fresh one, until the queue says it is done. Jobs skip what is done:
# the per-layer search resumes its study and the confirm its partial file.
#
#   SQA_NAS_GIT_REVISION=$(git rev-parse HEAD) WAIT=555 OUT=/some/folder \
#     bash experiments/gpu_queue_19.sh       # the revision: the copy there may have no .git
#
# State between machines lives in the tree: experiments/results/parts/per_layer_h200.db (the
# study) and per_layer_h200.partial.json (finished confirm runs). A fresh machine starts from
# them; copy the returned pl.db and pl.partial.json over them after every call and commit.
# What a fresh machine does not get: MO-ASHA's paused trials keep checkpoints beside the study
# (tens of MB each); there they wait with their rung values, and one that is promoted trains
# again from its start (Segment.restart).
set -u
cd "$(dirname "$0")/.."
WAIT=${WAIT:-555}
R=${R:-/tmp/r19}
OUT=${OUT:-$R/out}
PARTS=experiments/results/parts
# Done once the result is in the tree; move it away to run the queue again.
if [ -f experiments/results/per_layer_200M_h200.json ]; then
  echo "queue: done (experiments/results/per_layer_200M_h200.json)"; exit 0
fi
mkdir -p "$R" "$OUT"
t0=$(date +%s)

SITE="$R/site"  # the wheels in .whl/ (optuna, pydantic, ...), where the machine lacks them
if ! python3 -c "import optuna, pydantic, sqlalchemy" 2>/dev/null && [ ! -d "$SITE/optuna" ]; then
  python3 -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl
fi
export PYTHONPATH=$SITE:$PWD
# sqa_nas.kernels is kernels/ (pyproject's package-dir); uninstalled, python reads the tree,
# so the copy there gets a link (a machine with `pip install -e .` needs none).
python3 -c "import sqa_nas.kernels" 2>/dev/null || ln -s ../kernels sqa_nas/kernels
export SQA_NAS_GIT_REVISION=${SQA_NAS_GIT_REVISION:-unknown}

# A fresh machine starts from the state in the tree (never over newer state on this one).
[ -f "$R/pl.db" ] || { [ -f $PARTS/per_layer_h200.db ] && cp $PARTS/per_layer_h200.db "$R/pl.db"; }
[ -f "$R/pl.partial.json" ] || { [ -f $PARTS/per_layer_h200.partial.json ] &&
  cp $PARTS/per_layer_h200.partial.json "$R/pl.partial.json"; }

# The command runs in the foreground: a call's end stops what it started in the background
# (seen on the lent machine). SIGINT lets the driver record its in-flight trial (re-queued)
# or pause a promotion again; the confirm keeps its finished runs in the partial file and
# starts none that would not end in time (--stop-after), so no call ends in a lost run.
if [ ! -f "$R/pl.json" ]; then
  left=$(( WAIT - $(date +%s) + t0 - 20 ))
  echo "$(date -u +%T) per-layer search and confirm, ${left} s" >> "$R/queue.log"
  timeout -s INT -k 15 "$left" python3 -m experiments.per_layer \
    --space search_spaces/paper_dense.yaml --scheduler mo_asha --n-trials 48 \
    --tokens 200000000 --seeds 100,101,102 --top 3 --uniform MHA,GQA,SQA,sSQA,xSQA,lSQA \
    --storage "sqlite:///$R/pl.db" --out "$R/pl.json" --resume --stop-after $((left - 10)) \
    >> "$R/pl.log" 2>&1
  echo "$(date -u +%T) exit $?" >> "$R/queue.log"
fi
python3 - "$R/pl.db" "$OUT/pl.db" <<'PY'
import sqlite3, sys
src, dst = sqlite3.connect(sys.argv[1]), sqlite3.connect(sys.argv[2])
src.backup(dst)  # a consistent copy while the search writes
dst.close()
PY
cp "$R"/pl.json "$R"/pl.partial.json "$R"/pl.log "$R"/pl.png "$R"/queue.log "$OUT"/ 2>/dev/null
if [ -f "$R/pl.json" ]; then echo "queue: done"; else echo "queue: running; call again"; fi
tail -c 3000 "$R/pl.log"
