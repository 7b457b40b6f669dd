"""The experiments quoted in docs/edge.md (issue 18, the edge). Run from the repository root:

    PYTHONPATH=$PWD python -m bench.edge.race PORT 64 60              # keep-alive race, 64 clients, 60 s
    PYTHONPATH=$PWD python -m bench.edge.killtest PORT ARBITER_PID 30  # SIGKILL a worker under load (/echo)
    PYTHONPATH=$PWD python -m bench.edge.killtest PORT ARBITER_PID 30 classify   # the same on /classify
    PYTHONPATH=$PWD python -m bench.edge.abandon PORT ARBITER_PID 90   # hang up on a 90-min /timeline
    PYTHONPATH=$PWD python -m bench.edge.textfields PORT               # hostile text fields, names, /info
    PYTHONPATH=$PWD python -m bench.edge.early413 PORT                 # 200 MiB to /classify: when is 413 seen
    PYTHONPATH=$PWD python -m bench.edge.grpc_real GRPC_PORT           # idle streams, floods on the real service
    PYTHONPATH=$PWD python -m bench.edge.grpc_cpu_per_msg              # server CPU per empty stream message
    bench/edge/ab.sh                                                   # protocol overhead A/B with wrk

`tiny_service.py` is a stock BentoML service (no edge code) for the "before" figures:
`cd bench/edge && bentoml serve tiny_service:Tiny --port 3101`. Slow-client probes are
`python -m testkit.edge_probe` (see testkit/edge_probe.py).
"""
