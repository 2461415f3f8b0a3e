"""The messages between the ingress processes and the scheduler process (harness.live.channel).

The data plane (ingresses: HTTP connections, parsing, payloads) is split
from the control plane (the scheduler: the policy on compact metadata), as
serving systems do. Messages carry many requests at once: an ingress sends
what arrived during one turn of its event loop, the scheduler answers what
resolved during one turn of its own.

    ingress -> scheduler
        [ARRIVE, [[token, id or None, target index, t_arrival, copies or None, size, payload or None], ...],
         refused]                               refused: this ingress's requests refused at the door so far
        [QUERY, query id, what]                 what: "ready" | "stats"
    scheduler -> ingress
        [DONE, [[token, outcome index, batch id, reason], ...]]
        [ANSWER, query id, value]

`token` is the ingress's own handle on the waiting HTTP call; `target index`
indexes `targets` (the run's models, or its apps); `t_arrival` is the run
clock when the ingress read the request; `copies` an app request's tasks
per node (or a model's request of n items as n tasks: [n]); `size` the
items of a request the policy takes as one query; `payload` where the
request's tensor is (runtime.payload=tensor): [ingress, arena slot, 0,
bytes] in that ingress's harness.live.arena.Arena; `outcome index` indexes
OUTCOMES. An ingress that refuses a request at the door sends an ARRIVE
(with no rows if nothing else arrived) so that the scheduler's count of
refusals, which /metrics reports for the whole server whichever ingress
answers the scrape, stays current.
"""

from __future__ import annotations

from harness.core import DROPPED, ERROR, OK, REJECTED, TIMEOUT

ARRIVE, QUERY = 0, 1
DONE, ANSWER = 0, 1
DUPLICATE = "duplicate"          # the id was already used in this run: not a request of the run
OUTCOMES = [OK, DROPPED, REJECTED, TIMEOUT, ERROR, DUPLICATE]
OUTCOME_INDEX = {name: i for i, name in enumerate(OUTCOMES)}
