"""The live runtime: a policy serving real HTTP requests in real time on worker processes.

Processes and messages of one live run (one host shown; a worker may run on
another host, reached at tcp://host:port):

    load generator         frontend process (harness.live.frontend)      worker processes
    (Locust)               +------------------------------------+       (harness.live.worker)
                           | aiohttp handler                    |
    POST /v2/models/m/  -->|   LiveCluster.arrive(m, id)        |
         infer             |   policy.on_arrival(req)           |
                           |   ... timers on the precise loop   |  msgpack over ZeroMQ
                           |   LiveCluster.dispatch(batch)      |  DEALER -> ROUTER
                           |     WorkerPool.submit -------------------------> slot 0: receiver thread
                           |                                    |               -> FIFO -> executor thread
                           |     reply future <------------------------------ {"status", "exec", "wait"}
                           |   requests resolved, waiters woken |             slot 1: ...
                           |   policy.on_batch_done(batch)      |
    200 {"outputs"} <------| handler answers                    |
                           +------------------------------------+
                           on SIGTERM: records -> run dir, workers stopped

Modules:
- loop:     the precise asyncio event loop (sub-millisecond timers) and the run clock
- protocol: the v2 JSON bodies, their validation, and outcome() for clients
- worker:   the worker process and its executors (EmulatedExecutor reproduces profiled latencies)
- workers:  WorkerPool, which starts, talks to, watches and stops the workers
- cluster:  LiveCluster, the harness.core.Cluster handle of this runtime
- frontend: the HTTP server process with the policy inside
- server:   start_frontend(), for the orchestrator

Every process reads one clock: seconds since an epoch the orchestrator
chooses (harness.live.loop.Clock), so the frontend's arrival times and the
load generator's scheduled and send times are comparable.
"""
