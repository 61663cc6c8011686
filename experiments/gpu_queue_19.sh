#!/usr/bin/env bash
# The issue-19 GPU queue that is still to run (experiments/gpu_plan_19.md), for a GPU machine
# whose commands are cut after a few minutes: each call starts the queue in the background if
# it is not running, waits WAIT seconds, then copies what exists into OUT. Run it again, on
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
# (tens of MB each); the first search there fails and re-queues those trials, which train
# their first rung again.
set -u
cd "$(dirname "$0")/.."
WAIT=${WAIT:-555}
R=${R:-/tmp/r19}
OUT=${OUT:-$R/out}
PARTS=experiments/results/parts
mkdir -p "$R" "$OUT"
t0=$(date +%s)

if ! python3 -c "import optuna, pydantic, sqlalchemy" 2>/dev/null; then
  if [ ! -d /tmp/site/optuna ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  fi
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export SQA_NAS_GIT_REVISION=${SQA_NAS_GIT_REVISION:-unknown}

# A fresh machine starts from the state in the tree (never over newer state on this one).
[ -f "$R/pl.db" ] || { [ -f $PARTS/per_layer_h200.db ] && cp $PARTS/per_layer_h200.db "$R/pl.db"; }
[ -f "$R/pl.partial.json" ] || { [ -f $PARTS/per_layer_h200.partial.json ] &&
  cp $PARTS/per_layer_h200.partial.json "$R/pl.partial.json"; }

if ! pgrep -f "m experiments[.]per_layer" >/dev/null && [ ! -f "$R/pl.json" ]; then
  echo "$(date -u +%T) starting the per-layer search and confirm" >> "$R/queue.log"
  nohup python3 -m experiments.per_layer --space search_spaces/paper_dense.yaml \
    --scheduler mo_asha --n-trials 48 --tokens 200000000 --seeds 100,101,102 --top 3 \
    --uniform MHA,GQA,SQA,sSQA,xSQA,lSQA --storage "sqlite:///$R/pl.db" --out "$R/pl.json" \
    --resume >> "$R/pl.log" 2>&1 &
fi

while [ $(( $(date +%s) - t0 )) -lt "$WAIT" ]; do
  if [ -f "$R/pl.json" ] || ! pgrep -f "m experiments[.]per_layer" >/dev/null; then break; fi
  sleep 5
done
python3 - "$R/pl.db" "$OUT/pl.db" <<'PY'
import sqlite3, sys
src, dst = sqlite3.connect(sys.argv[1]), sqlite3.connect(sys.argv[2])
src.backup(dst)  # a consistent copy while the search writes
dst.close()
PY
cp "$R"/pl.json "$R"/pl.partial.json "$R"/pl.log "$R"/pl.png "$R"/queue.log "$OUT"/ 2>/dev/null
if [ -f "$R/pl.json" ]; then echo "queue: done"; else echo "queue: running; call again"; fi
tail -c 3000 "$R/pl.log"
