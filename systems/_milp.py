"""JigsawServe's allocation as a mixed-integer linear program, solved by HiGHS (scipy.optimize.milp).

Given apps (task graphs whose nodes have candidate variants, harness.apps),
each app's demand and branching factors, the kinds of GPU segment a device
can be cut into and every variant's latency profile on each, choose the
variants, each node's latency budget and the replicas of each variant on
each segment kind that serve the demand with the least GPU share.

The program, per app (apps share only the GPUs):

    options o = (node i, variant v, segment s, batch b, own or shared): v on
        a segment s running batches of b serves mu_o = b / l(b) tasks/s.
        On a segment of its own a task waits for at most the batch ahead and
        runs in its own: L_o = k * l(b) (k: budget_per_batch; Loki's SLO/2
        is k = 2). On a shared segment the others' batches run while its
        batch fills, at no more than its node's rate r: L_o = l(b) +
        max((k - 1) l(b), (b - 1) / r)
    plans p: one variant per node (every combination); accuracy acc_p, the
        request accuracy of harness.apps (the weakest path's product of
        relative accuracies)

    n_o in Z>=0      segments of its own (own o) f_o in [0, 1]   part of a shared segment (shared o)
    h_s in Z>=0      shared segments of kind s   y_o in {0, 1}   option in use
    B_i >= 0         node i's latency budget     c_p >= 0        share of the requests on plan p (x headroom)
    s in [0, 1]      share of the demand served  e in [0, headroom - 1]   capacity planned beyond it

    n_o <= N_s y_o, f_o <= y_o         replicas only of options in use (N_s: segments of kind s that fit)
    sum_o on s f_o <= h_s              the parts fill whole shared segments
    sum_b y_(i,v,s,b,.) <= 1           one batch size per variant, segment kind, own or shared
    L_o y_o <= B_i                     an option in use fits its node's budget
    sum_(i on path) B_i <= SLO         for every root-to-leaf path (even split: B_i fixed, see below)
    sum_o mu_o (n_o or f_o) >= D_i sum_(p: p_i = v) c_p    for every (i, v): capacity >= demand x branching
    sum_p c_p = s + e
    sum_p acc_p c_p >= target x (s + e)
    GPU share = sum_s share_s (sum_o on s n_o + h_s) <= GPUs

with D_i = requests/s x mean tasks of node i per request. It minimises
the GPU share with s = 1 and e = headroom - 1. When no allocation fits the
GPUs there are, it serves all the demand with what headroom they leave
(s = 1, maximising sum over apps of rate x e); when not even that fits, the
most requests with the full headroom (e = (headroom - 1) s, maximising sum
over apps of rate x s: a plan with no room to spare would break at the
first burst; the rest is to be shed), and it then solves again for the
demand it admits, since shared batches fill at the rate admitted. HiGHS stops within MIP_GAP of the
optimum. The budgets a solution leaves unused are handed out: each node's
grows by the least factor SLO / (path's sum) over the paths through it.

A shared segment runs the parts of several tasks in turn, so a task too
light for a segment of its own does not take one: our stand-in for
JigsawServe's MPS levels inside a MIG slice (several tasks on one slice),
whose shares below a seventh of a GPU have no profiles. A shared batch's
latency takes its node's whole rate r, so a variant that gets part of its
node's tasks fills its batches more slowly than planned.

Budget splits: `graph` leaves the B_i to the solver (the budget follows
each node's cost); `even` fixes B_i = SLO / (the most nodes on a path
through i), the split of a scheduler that does not look at the graph.
Without accuracy scaling every node has only its most accurate variant.

An app that no choice of variants can serve within its SLO and accuracy
target, at any demand, is a configuration error (HarnessError); demand
beyond the GPUs is not: the allocation then serves less than all of it and
says so in one line (`note`).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import LinearConstraint, milp
from scipy.sparse import coo_matrix

from harness.apps import App
from harness.errors import HarnessError
from harness.profiles import LatencyCurve

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)     # batch sizes the program chooses from (as profiled)
MIN_RATE = 1.0          # tasks/s: every node of an app seen keeps some capacity, however quiet
MAX_PLANS = 4096        # variant combinations of one app the program enumerates at most
TIME_LIMIT_S = 20.0     # HiGHS gives its best allocation found by then
MIP_GAP = 0.01          # stop within 1% of the least GPU share: large instances solve in about a second, not ten
MAX_PART_RATIO = 100.0  # a part of a shared segment is at least 1% of it (tames the solver's numbers)
PART_TOLERANCE = 1e-7  # a smaller part of a shared segment is the solver's rounding, not a task's load
EVEN, GRAPH = "even", "graph"


@dataclass(frozen=True)
class Segment:
    """A kind of GPU segment: a partition (harness.gpu.partitions) and the share of a device it takes."""

    partition: str
    share: float


@dataclass(frozen=True)
class Demand:
    app: App
    rate: float                         # requests/s
    copies: tuple[float, ...]           # mean tasks of each node per request (the branching factors)
    key: str                            # the config key of the app's SLO and target ('apps.traffic', 'models.m0')


@dataclass(frozen=True)
class Replicas:
    """Segments of one kind that run one variant for one node: `count` of its own, and `part` of a shared one."""

    app: str
    node: int
    variant: str
    partition: str
    count: int
    part: float
    rate: float                         # tasks/s they serve, all together


@dataclass
class Allocation:
    replicas: list[Replicas]
    shared: dict[str, int]                                  # partition -> shared segments the parts fill
    plans: dict[str, list[tuple[tuple[str, ...], float]]]   # app -> (variant of each node, share of its requests)
    budgets: dict[str, tuple[float, ...]]                   # app -> each node's latency budget (s)
    served: dict[str, float]                                # app -> share of its demand served
    share: float                                            # GPUs the segments take (share-weighted)
    limited: bool                                           # by the GPUs: less than all the demand x headroom
    note: str = ""                                          # one line when some demand is not served


@dataclass(frozen=True)
class _Option:
    app: int
    node: int
    variant: str
    segment: Segment
    batch: int
    shared: bool                        # a part of a shared segment, not segments of its own
    latency: float                      # the task's latency budget it needs
    throughput: float                   # tasks/s of one whole segment


@dataclass
class _Program:
    """A MILP being written down: variables (bounds, integrality) and sparse rows lower <= a.x <= upper."""

    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[int] = field(default_factory=list)
    rows: list[tuple[dict[int, float], float, float]] = field(default_factory=list)

    def var(self, lower: float, upper: float, integer: bool = False) -> int:
        self.lower.append(lower)
        self.upper.append(upper)
        self.integer.append(int(integer))
        return len(self.lower) - 1

    def row(self, coefs: dict[int, float], lower: float, upper: float) -> None:
        self.rows.append((coefs, lower, upper))

    def solve(self, cost: np.ndarray, lower: np.ndarray, upper: np.ndarray, extra=()) -> np.ndarray | None:
        """The best solution within the bounds, the rows and the `extra` rows; None if there is none."""
        every = [*self.rows, *extra]
        r, c, v = [], [], []
        for k, (coefs, _, _) in enumerate(every):
            r.extend([k] * len(coefs))
            c.extend(coefs)
            v.extend(coefs.values())
        a = coo_matrix((v, (r, c)), shape=(len(every), len(self.lower))).tocsr()
        rows = LinearConstraint(a, [lo for _, lo, _ in every], [hi for _, _, hi in every])
        with _stdout_silenced():
            res = milp(cost, integrality=np.array(self.integer), bounds=(lower, upper), constraints=rows,
                       options={"time_limit": TIME_LIMIT_S, "mip_rel_gap": MIP_GAP})
        return res.x if res.x is not None else None


_SILENCING = threading.Lock()


@contextmanager
def _stdout_silenced():
    """The HiGHS bundled with scipy writes 'HighsMipSolverData::transformNewIntegerFeasibleSolution
    tmpSolver.run();' to the process's standard output whatever its log settings (ERGO-Code/HiGHS#2783, fixed
    in later HiGHS releases), so the solve runs with file descriptor 1 on /dev/null. That descriptor is the
    whole process's: a solve in a worker thread (cluster.offload) mutes the other threads' standard output
    meanwhile (the live scheduler writes there only its ready line, before any policy runs), and solves in
    two threads take turns, or the second would save the first's /dev/null and restore it for good."""
    with _SILENCING:
        sys.stdout.flush()
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)


def solve(demands: Sequence[Demand], segments: Sequence[Segment], curve: Callable[[str, str], LatencyCurve],
          gpus: float, **settings) -> Allocation:
    """The allocation of least GPU share that serves `demands` (see the module doc); `curve(model, partition)`
    is a variant's latency profile on a segment, `gpus` the devices there are; `settings`: budget_per_batch,
    budget_split, headroom and accuracy_scaling."""
    allocation = _solve(demands, segments, curve, gpus, **settings)
    if allocation.note:
        # Shared batches fill at the rate admitted, not the rate offered: plan again for what is admitted.
        admitted = [replace(d, rate=d.rate * allocation.served[d.app.name]) for d in demands
                    if allocation.served[d.app.name] > 0]
        again = _solve(admitted, segments, curve, gpus, **settings)
        served = {name: share * again.served.get(name, 0.0) for name, share in allocation.served.items()}
        allocation = replace(again, served=served, note=_over_capacity(demands, served, gpus))
    return allocation


def _solve(demands: Sequence[Demand], segments: Sequence[Segment], curve: Callable[[str, str], LatencyCurve],
           gpus: float, *, budget_per_batch: float, budget_split: str, headroom: float,
           accuracy_scaling: bool) -> Allocation:
    plans = [_plans(d, accuracy_scaling) for d in demands]
    budgets = [_even_budgets(d.app) if budget_split == EVEN else None for d in demands]
    options = [o for a, d in enumerate(demands)
               for o in _options(a, d, plans[a], segments, curve, budget_per_batch, budgets[a])]
    for a, d in enumerate(demands):
        plans[a] = _check_servable(d, plans[a], [o for o in options if o.app == a], segments)

    prog = _Program()
    # x[k]: segments of its own (integer), or the part of a shared one, of option k.
    x = [prog.var(0, 1) if o.shared else prog.var(0, math.floor(gpus / o.segment.share + 1e-9), integer=True)
         for o in options]
    y = [prog.var(0, 1, integer=True) for _ in options]
    h = {s: prog.var(0, math.floor(gpus / s.share + 1e-9), integer=True) for s in segments}
    served = [prog.var(0, 1) for _ in demands]
    extra = [prog.var(0, headroom - 1) for _ in demands]
    c = [[prog.var(0, headroom) for _ in plans[a]] for a in range(len(demands))]
    b = [[prog.var(0, d.app.slo) for _ in d.app.nodes] if budgets[a] is None else None
         for a, d in enumerate(demands)]
    for k, o in enumerate(options):
        prog.row({x[k]: 1, y[k]: -prog.upper[x[k]]}, -math.inf, 0)
        if b[o.app] is not None:
            prog.row({y[k]: o.latency, b[o.app][o.node]: -1}, -math.inf, 0)
    for (s, shared), ks in _group(options, lambda o: (o.segment, o.shared)).items():
        if shared:
            prog.row({**{x[k]: 1 for k in ks}, h[s]: -1}, -math.inf, 0)
    for ks in _group(options, lambda o: (o.app, o.node, o.variant, o.segment, o.shared)).values():
        prog.row({y[k]: 1 for k in ks}, 0, 1)
    for a, d in enumerate(demands):
        if b[a] is not None:
            for path in d.app.paths:
                prog.row({b[a][i]: 1 for i in path}, 0, d.app.slo)
        prog.row({**{v: 1 for v in c[a]}, served[a]: -1, extra[a]: -1}, 0, 0)
        prog.row({**{v: acc for v, (_, acc) in zip(c[a], plans[a])}, served[a]: -d.app.accuracy,
                  extra[a]: -d.app.accuracy}, 0, math.inf)
    by_variant = _group(options, lambda o: (o.app, o.node, o.variant))
    for (a, i, v), ks in by_variant.items():
        need = max(demands[a].rate * demands[a].copies[i], MIN_RATE)
        # Scaled by the demand so that coefficients stay near 1, and capped: one segment of its own serving all
        # the demand (x headroom) is as good as one serving more, and a part is at least 1/MAX_PART_RATIO of one.
        row = {x[k]: min(options[k].throughput / need, MAX_PART_RATIO if options[k].shared else headroom)
               for k in ks}
        for share, (choice, _) in zip(c[a], plans[a]):
            if choice[i] == v:
                row[share] = -1
        prog.row(row, 0, math.inf)
    used = {**{x[k]: o.segment.share for k, o in enumerate(options) if not o.shared},
            **{h[s]: s.share for s in segments}}
    prog.row(used, 0, gpus)

    size = len(prog.lower)
    share = np.zeros(size)
    share[list(used)] = list(used.values())
    lower, upper = np.array(prog.lower, float), np.array(prog.upper, float)
    lower[served] = 1.0
    lower[extra] = headroom - 1
    values = prog.solve(share, lower, upper)
    limited = values is None
    if limited:                         # all of it, with less headroom
        most = np.zeros(size)
        most[extra] = [-d.rate for d in demands]
        lower[extra] = 0.0
        values = prog.solve(most, lower, upper)
    if values is None:                  # the most requests, with all their headroom
        most = np.zeros(size)
        most[served] = [-d.rate for d in demands]
        lower[served] = 0.0
        values = prog.solve(most, lower, upper, [({e: 1, s: 1 - headroom}, 0, 0) for e, s in zip(extra, served)])
        if values is None:
            raise HarnessError(f"the allocation program found no solution within {TIME_LIMIT_S:g} s; "
                               "serve fewer apps or give their nodes fewer variants")
    return _allocation(demands, plans, options, values, x, h, served, c, b, budgets, gpus, limited)


def _plans(d: Demand, accuracy_scaling: bool) -> list[tuple[tuple[str, ...], float]]:
    """Every choice of a variant per node with its request accuracy."""
    app = d.app
    choices = [n.variants if accuracy_scaling else (n.model,) for n in app.nodes]
    if math.prod(len(v) for v in choices) > MAX_PLANS:
        raise HarnessError(f"{d.key}: {math.prod(len(v) for v in choices)} combinations of variants, more than the "
                           f"{MAX_PLANS} the allocation program enumerates; give its nodes fewer variants")
    return [(p, app.accuracy_of([n.relative_accuracy(v) for n, v in zip(app.nodes, p)]))
            for p in itertools.product(*choices)]


def _even_budgets(app: App) -> tuple[float, ...]:
    """SLO / (the most nodes on any root-to-leaf path through the node)."""
    depth = [max(len(p) for p in app.paths if i in p) for i in range(len(app.nodes))]
    return tuple(app.slo / k for k in depth)


def _options(a: int, d: Demand, plans, segments, curve, k: float, budgets) -> list[_Option]:
    """Each variant's (segment, batch, own or shared) options that fit a budget; a larger batch that is no
    faster is left out."""
    out = []
    for i, node in enumerate(d.app.nodes):
        limit = budgets[i] if budgets else d.app.slo
        rate = max(d.rate * d.copies[i], MIN_RATE)
        for v in sorted({p[i] for p, _ in plans}):
            for s in segments:
                l = curve(v, s.partition)
                for shared in (False, True):
                    best = 0.0
                    for batch in (b for b in BATCHES if b <= l.max_batch):
                        wait = (k - 1) * l.mean[batch]
                        if shared:              # its first task waits for b - 1 more to come
                            wait = max(wait, (batch - 1) / rate)
                        latency = wait + l.mean[batch]
                        if latency > limit:
                            break
                        mu = batch / l.mean[batch]
                        if mu > best:
                            best = mu
                            out.append(_Option(a, i, v, s, batch, shared, latency, mu))
    return out


def _check_servable(d: Demand, plans, options: list[_Option], segments) -> list:
    """The plans whose fastest options fit the SLO (HarnessError when none of them meets the accuracy target:
    no mix of them can)."""
    fastest: dict[tuple[int, str], float] = {}
    for o in options:
        fastest[o.node, o.variant] = min(fastest.get((o.node, o.variant), math.inf), o.latency)
    app = d.app
    fit = [(p, acc) for p, acc in plans
           if all(sum(fastest.get((i, p[i]), math.inf) for i in path) <= app.slo for path in app.paths)]
    if not any(acc >= app.accuracy - 1e-12 for _, acc in fit):
        kinds = ", ".join(s.partition for s in segments)
        raise HarnessError(f"{d.key}: no choice of variants keeps accuracy >= {app.accuracy:g} within the "
                           f"{app.slo * 1e3:g} ms SLO on segments {kinds}; lower the accuracy target or raise slo_ms")
    return fit


def _over_capacity(demands: Sequence[Demand], served: dict[str, float], gpus: float) -> str:
    """One line naming the apps whose demand is not all served ('' when all is)."""
    short = [f"{d.app.name} {served[d.app.name]:.0%} of {d.rate:,.0f} req/s" for d in demands
             if served[d.app.name] < 1 - 1e-6]
    if not short:
        return ""
    return (f"over capacity: {gpus:g} GPUs serve only {', '.join(short)} within the SLOs and accuracy targets; "
            "the rest is shed")


def _stretched(app: App, budgets: list[float]) -> tuple[float, ...]:
    """The solved budgets grown to use the whole SLO: each node's by the least factor SLO / (path's sum) of
    the paths through it, so no path goes over the SLO and the tightest reaches it. An app the solution
    serves none of may have a path of zero budgets (they bind nothing): it gets the even split."""
    if any(sum(budgets[j] for j in p) <= 0 for p in app.paths):
        return _even_budgets(app)
    factor = [min(app.slo / sum(budgets[j] for j in p) for p in app.paths if i in p) for i in range(len(budgets))]
    return tuple(bi * f for bi, f in zip(budgets, factor))


def _group(options: list[_Option], key) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for k, o in enumerate(options):
        groups.setdefault(key(o), []).append(k)
    return groups


def _allocation(demands, plans, options, values, x, h, served, c, b, budgets, gpus, limited) -> Allocation:
    replicas = []
    for k, o in enumerate(options):
        count, part = (0, float(values[x[k]])) if o.shared else (round(values[x[k]]), 0.0)
        if count or part > PART_TOLERANCE:
            replicas.append(Replicas(demands[o.app].app.name, o.node, o.variant, o.segment.partition, count, part,
                                     o.throughput * (count + part)))
    shared = {s.partition: round(values[v]) for s, v in h.items() if round(values[v]) > 0}
    share = sum(r.count * s.share for r in replicas for s in h if s.partition == r.partition) + \
        sum(s.share * round(values[v]) for s, v in h.items())
    fraction = {d.app.name: float(min(1.0, max(0.0, values[served[a]]))) for a, d in enumerate(demands)}
    chosen, node_budgets = {}, {}
    for a, d in enumerate(demands):
        total = sum(values[v] for v in c[a])
        chosen[d.app.name] = [(p, values[v] / total) for v, (p, _) in zip(c[a], plans[a])
                              if total > 0 and values[v] > 1e-9]
        node_budgets[d.app.name] = budgets[a] if b[a] is None else \
            _stretched(d.app, [float(values[v]) for v in b[a]])
    note = _over_capacity(demands, fraction, gpus)
    return Allocation(replicas, shared, chosen, node_budgets, fraction, share, limited, note)
