"""Serving statistics of a live run, in Triton's shapes: the statistics extension and Prometheus metrics.

The scheduler process keeps `Stats` up to date as the ledger resolves
requests and batches (cumulative counters: nothing is scanned on a query);
an ingress asks for a snapshot and answers

    GET /v2/models/{name}/stats   Triton's statistics extension (counts, and durations in ns)
    GET /metrics                  Prometheus text with Triton's metric names (nv_inference_*), plus
                                  harness_* gauges (pending requests, slots alive), the requests
                                  refused at the door (a counter, summed over the ingresses) and a
                                  batch-size histogram

so tools built for Triton (perf_analyzer's server-side breakdown, Grafana
dashboards over Triton's metrics) read any system under test. Durations
follow Triton's meanings: queue = arrival to the start of the batch that
ran the request; compute_infer = that batch's execution, counted once per
request it held; success = arrival to the answer (failures alike).
compute_input and compute_output carry compute_infer's counts with 0 ns:
moving the inputs and outputs is part of the batch's measured execution
here, and Triton's clients (perf_analyzer) require the three counts equal.
Requests of an app count under the app's name; their tasks under their
models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.core import OK

NS = 1_000_000_000
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class ModelStats:
    success: list[int] = field(default_factory=lambda: [0, 0])          # [count, ns]
    fail: list[int] = field(default_factory=lambda: [0, 0])
    queue: list[int] = field(default_factory=lambda: [0, 0])
    compute_infer: list[int] = field(default_factory=lambda: [0, 0])
    inference_count: int = 0              # items run (a batch of 8 counts 8)
    execution_count: int = 0              # batches run
    last_inference_ms: int = 0            # run clock, ms
    batches: dict[int, list[int]] = field(default_factory=dict)        # batch size -> [count, ns]


class Stats:
    def __init__(self, names):
        self.models = {name: ModelStats() for name in names}

    def request(self, item, t_done: float) -> None:
        """A request (plain task or app request) resolved at `t_done`."""
        s = self.models.get(item.model)
        if s is None:
            return
        bucket = s.success if item.status == OK else s.fail
        bucket[0] += 1
        bucket[1] += int((t_done - item.t_arrival) * NS)

    def batch(self, batch) -> None:
        """A batch ran ok: queue and compute time for each task it held."""
        s = self.models.get(batch.model)
        if s is None:
            return
        exec_ns = int((batch.t_end - batch.t_start) * NS)
        n = len(batch.tasks) or batch.size
        s.queue[0] += n
        s.queue[1] += sum(int((batch.t_start - t.t_arrival) * NS) for t in batch.tasks)
        s.compute_infer[0] += n
        s.compute_infer[1] += exec_ns * n
        s.inference_count += batch.size
        s.execution_count += 1
        s.last_inference_ms = int(batch.t_end * 1000)
        per = s.batches.setdefault(batch.size, [0, 0])
        per[0] += 1
        per[1] += exec_ns

    def snapshot(self) -> dict:
        return {name: {"success": s.success, "fail": s.fail, "queue": s.queue, "compute_infer": s.compute_infer,
                       "inference_count": s.inference_count, "execution_count": s.execution_count,
                       "last_inference": s.last_inference_ms, "batches": sorted(s.batches.items())}
                for name, s in self.models.items()}


def triton_statistics(snapshot: dict, names: list[str]) -> dict:
    """Triton's statistics extension body for `names` (every count and duration an integer)."""
    zero = {"count": 0, "ns": 0}
    stats = []
    for name in names:
        s = snapshot[name]
        stats.append({
            "name": name, "version": "1", "last_inference": s["last_inference"],
            "inference_count": s["inference_count"], "execution_count": s["execution_count"],
            "inference_stats": {
                "success": _pair(s["success"]), "fail": _pair(s["fail"]), "queue": _pair(s["queue"]),
                "compute_input": _counted(s["compute_infer"]), "compute_infer": _pair(s["compute_infer"]),
                "compute_output": _counted(s["compute_infer"]), "cache_hit": dict(zero), "cache_miss": dict(zero)},
            "batch_stats": [{"batch_size": size, "compute_input": _counted([count]),
                             "compute_infer": {"count": count, "ns": ns}, "compute_output": _counted([count])}
                            for size, (count, ns) in s["batches"]],
        })
    return {"model_stats": stats}


def _counted(v: list[int]) -> dict:
    """A phase counted with compute_infer but timed inside it."""
    return {"count": int(v[0]), "ns": 0}


def _pair(v: list[int]) -> dict:
    return {"count": int(v[0]), "ns": int(v[1])}


def prometheus(snapshot: dict, gauges: dict[str, float], counters: dict[str, float]) -> str:
    """Prometheus exposition text: Triton's counters per model, then the harness's own gauges and counters."""
    lines = []

    def family(metric: str, kind: str, text: str, values: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {metric} {text}")
        lines.append(f"# TYPE {metric} {kind}")
        lines.extend(f"{metric}{{{labels}}} {value:g}" if labels else f"{metric} {value:g}" for labels, value in values)

    per = [(f'model="{name}",version="1"', s) for name, s in snapshot.items()]
    family("nv_inference_request_success", "counter", "Number of successful inference requests",
           [(lab, s["success"][0]) for lab, s in per])
    family("nv_inference_request_failure", "counter", "Number of failed inference requests",
           [(lab, s["fail"][0]) for lab, s in per])
    family("nv_inference_count", "counter", "Number of inferences performed (a batch of n counts n)",
           [(lab, s["inference_count"]) for lab, s in per])
    family("nv_inference_exec_count", "counter", "Number of model executions performed (batches)",
           [(lab, s["execution_count"]) for lab, s in per])
    family("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds",
           [(lab, (s["success"][1] + s["fail"][1]) / 1000) for lab, s in per])
    family("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds",
           [(lab, s["queue"][1] / 1000) for lab, s in per])
    family("nv_inference_compute_infer_duration_us", "counter",
           "Cumulative compute inference duration in microseconds", [(lab, s["compute_infer"][1] / 1000) for lab, s in per])
    lines.append("# HELP harness_batch_size Batches run, by size")
    lines.append("# TYPE harness_batch_size histogram")
    for name, s in snapshot.items():
        sizes = dict(s["batches"])
        for edge in BATCH_BUCKETS:
            total_edge = sum(c for size, (c, _) in sizes.items() if size <= edge)
            lines.append(f'harness_batch_size_bucket{{model="{name}",le="{edge}"}} {total_edge}')
        total = sum(c for c, _ in sizes.values())
        lines.append(f'harness_batch_size_bucket{{model="{name}",le="+Inf"}} {total}')
        lines.append(f'harness_batch_size_sum{{model="{name}"}} {sum(size * c for size, (c, _) in sizes.items())}')
        lines.append(f'harness_batch_size_count{{model="{name}"}} {total}')
    for kind, values in (("gauge", gauges), ("counter", counters)):
        for metric, value in values.items():
            lines.append(f"# TYPE {metric} {kind}")
            lines.append(f"{metric} {value:g}")
    return "\n".join(lines) + "\n"
