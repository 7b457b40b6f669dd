#!/bin/bash
# A/B of the bare-uvicorn echo app (testkit/edge_app.py): uvicorn's own protocol, the guarded one
# (serving/edge.py), and guarded + CancelOnDisconnect; 3 rounds, interleaved. Needs wrk.
#     experiments/edge/ab.sh          # PYTHON=... to use another interpreter than .venv/bin/python
# Prints one line per round and variant to stdout: wrk -c1 req/s and p50, wrk -c32 req/s.
# Measured: docs/edge.md, "Slow clients".
cd "$(dirname "$0")/../.."  # the repository root: testkit is imported from here
P=${PYTHON:-.venv/bin/python}
echo 'wrk.method="POST"; wrk.body=string.rep("x", 2000); wrk.headers["Content-Type"]="application/octet-stream"' > ${TMPDIR:-/tmp}/edge-post.lua
declare -A FLAGS=( [plain]="--plain --no-cancel" [guarded]="--no-cancel" [guarded+cancel]="" )
for round in 1 2 3; do
  for v in plain guarded guarded+cancel; do
    PYTHONPATH=$PWD $P -m testkit.edge_app --port 8190 ${FLAGS[$v]} > /dev/null 2>&1 &
    pid=$!; sleep 1.5
    wrk -t1 -c1 -d4s -s ${TMPDIR:-/tmp}/edge-post.lua http://127.0.0.1:8190/echo > /dev/null  # warm
    one=$(wrk -t1 -c1 -d8s --latency -s ${TMPDIR:-/tmp}/edge-post.lua http://127.0.0.1:8190/echo | awk '/Requests\/sec/{r=$2} / 50%/{p=$2} END{print r, p}')
    many=$(wrk -t2 -c32 -d8s -s ${TMPDIR:-/tmp}/edge-post.lua http://127.0.0.1:8190/echo | awk '/Requests\/sec/{print $2}')
    echo "round $round $v: c1 req/s+p50 = $one ; c32 req/s = $many"
    kill -INT $pid; wait $pid 2>/dev/null
  done
done
