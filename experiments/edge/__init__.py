"""Experiments behind docs/edge.md: each serves nothing itself; start a server, then point it there.

    bentoml serve experiments.edge.tiny_service:Tiny --port 3101     # stock BentoML, no edge code
    bentoml serve testkit.edge_service:EdgeTiny --port 3102          # the same with the edge installed
    python -m experiments.edge.race PORT 64 60                       # keep-alive race, 64 clients, 60 s
    python -m experiments.edge.killtest PORT ARBITER_PID 30          # SIGKILL a worker under load (/echo)
    python -m experiments.edge.killtest PORT ARBITER_PID 30 classify # the same on the service's /classify
    python -m experiments.edge.abandon PORT ARBITER_PID 90           # hang up on a 90-min /timeline upload
    experiments/edge/ab.sh                                           # protocol overhead A/B with wrk

Slow-client probes are `python -m testkit.edge_probe` (testkit/edge_probe.py). Every script prints
its figures to stdout; docs/edge.md records them with the command and commit.
"""
