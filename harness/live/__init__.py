"""The live runtime: a policy serving real HTTP requests in real time on worker processes.

Processes and messages of one live run (one host shown; a worker may run on
another host, reached at tcp://host:port):

    load generator      ingress processes        scheduler process              worker processes
    (Locust)            (harness.live.ingress)   (harness.live.scheduler)       (harness.live.worker)
                        +-------------------+    +------------------------+
    POST /v2/models/ -->| HTTP, v2 parsing  |    | LiveCluster.arrive     |
         m/infer        | arrival stamped   |--->|  policy.on_arrival     |
                        | (many per message)|    |  timers (precise loop) |   msgpack, sockets  
                        |                   |    |  LiveCluster.dispatch ------> slot 0: FIFO -> executor
                        |                   |    |  ledger: outcomes  <-------- {"status", "exec"}
    200 {"outputs"} <---| answer written    |<---|  answers, batched      |      slot 1: ...
                        +-------------------+    +------------------------+
      (SO_REUSEPORT: one port, N processes)     on SIGTERM: records -> run dir, everything stopped

The data plane (connections, parsing, payloads) spreads over the
ingresses; the control plane (the policy) sees every request in one
process, on compact metadata. Messages are length-prefixed msgpack over
Unix or TCP sockets (harness.live.channel). Real tensor payloads
(runtime.payload=tensor) go from an ingress to a worker through shared
memory (harness.live.arena), never through the scheduler.

Modules:
- loop:      the precise asyncio event loop (sub-millisecond timers) and the run clock
- protocol:  the v2 JSON bodies, their validation, and outcome() for clients
- wire:      the messages between ingresses and the scheduler
- channel:   the sockets those messages (and the workers' batches) travel over
- arena:     shared memory for tensor payloads, ingress -> worker
- stats:     Triton's statistics and Prometheus metrics, from the scheduler's counters
- ingress:   an HTTP ingress process
- scheduler: the scheduler process (policy, LiveCluster, worker pool, ingresses)
- worker:    the worker process and its executors (EmulatedExecutor reproduces profiled latencies)
- workers:   WorkerPool, which starts, talks to, watches and stops the workers
- cluster:   LiveCluster, the harness.core.Cluster handle of this runtime
- server:    start_server(), for the orchestrator
- triton:    real tritonserver as the system under test (a package: server, model repository, stub env)

Every process reads one clock: seconds since an epoch the orchestrator
chooses (harness.live.loop.Clock), so arrival times stamped by the
ingresses and the load generator's scheduled and send times are comparable.
"""
