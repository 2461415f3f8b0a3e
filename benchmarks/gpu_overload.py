"""One real GPU at and past its capacity: goodput against the oracle bound, and the server staying up.

ResNet-50 alone (SLO 25 ms) on this machine's GPU (`cluster=auto`), each
system at the oracle rate (the profile's largest batch within the SLO, run
back to back) and at a multiple of it, while a thread asks the server's
health route every 0.5 s. It prints, per run, goodput over the oracle
bound, SLO attainment, what was shed at the door and by the policy, and the
health checks' answers and worst time -- overload must degrade to a
plateau at capacity, never collapse. The run directories (with their
provenance) are kept under --out.

    python benchmarks/gpu_overload.py --out results/reference/h200-overload [--systems eager,symphony]
        [--factors 1,2] [--seconds 20] [any harness override]
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from _cli import Parser, above, listed, run_main, system_names

ROOT = Path(__file__).resolve().parent.parent

from harness.assembly import detect_gpus  # noqa: E402
from harness.metrics import oracle_goodput  # noqa: E402
from harness.profiles import load_profile, profile_path  # noqa: E402

MODEL, SLO_S = "resnet50", 0.025


class Health:
    """Polls /v2/health/live of the run's ingress every 0.5 s; keeps (status, seconds) per check."""

    def __init__(self, run: subprocess.Popen, run_dir: Path):
        self.run, self.run_dir, self.checks = run, run_dir, []     # (when, HTTP status or 0, seconds)
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def during(self, seconds: float) -> list[tuple[float, int, float]]:
        """The checks while the schedule ran: from the first answer on, for `seconds` (the server
        stopping at the end is not a failure)."""
        first = next((t for t, status, _ in self.checks if status == 200), None)
        return [] if first is None else [c for c in self.checks if first <= c[0] <= first + seconds]

    def _url(self) -> str | None:
        for p in psutil.Process(self.run.pid).children(recursive=True):
            try:
                if "harness.live.ingress" in " ".join(p.cmdline()):
                    ports = [c.laddr.port for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
                    if ports:
                        return f"http://127.0.0.1:{ports[0]}/v2/health/live"
            except psutil.Error:
                continue
        return None

    def _poll(self) -> None:
        url = None
        while self.run.poll() is None:
            url = url or self._url()
            if url and (self.run_dir / "client").exists():       # the load is on
                t = time.monotonic()
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        self.checks.append((t, r.status, time.monotonic() - t))
                except OSError:
                    self.checks.append((t, 0, time.monotonic() - t))
            time.sleep(0.5)


def main() -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--systems", type=system_names, default="eager,symphony")
    ap.add_argument("--factors", type=listed(above(0)), default="1,2")
    ap.add_argument("--seconds", type=above(5), default=20.0, help="each run's duration, > 5 s (4 s warm-up, 1 s "
                    "cool-down)")
    ap.add_argument("--gpu-type", default="h200", help="the profile the oracle rate is computed from")
    args, extra = ap.parse_known_args()
    if not detect_gpus():       # cluster=auto would run on emulated slots: not what this measures
        ap.error("no NVIDIA GPU here (NVML sees none): run this on a GPU host")
    curve = load_profile(profile_path(args.gpu_type, "whole")).curves[MODEL]
    rate = oracle_goodput({MODEL: 1e9}, {MODEL: SLO_S}, [{MODEL: curve}])["oracle_capacity"]
    print(f"oracle rate of {MODEL} on one {args.gpu_type} (SLO {SLO_S * 1e3:g} ms): {rate:,.0f} req/s", flush=True)
    rows, failed = [], []
    for system in args.systems:
        for factor in args.factors:
            run_dir = args.out / f"{system}-x{factor:g}"
            cmd = [sys.executable, "-m", "harness", f"system={system}", "cluster=auto", "models=resnet50",
                   "workload=poisson", f"workload.rate={rate * factor:.0f}", f"duration_s={args.seconds}",
                   "warmup_s=4", "cooldown_s=1", f"hydra.run.dir={run_dir}", *extra]
            run = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            health = Health(run, run_dir)
            _, err = run.communicate(timeout=900)
            if not (run_dir / "summary.json").exists():
                print(f"{system} x{factor:g}: no summary (exit {run.returncode}): {err.strip()[-400:]}", flush=True)
                failed.append(f"{system} x{factor:g}")
                continue
            s = json.loads((run_dir / "summary.json").read_text())
            counts = s["status_counts"]
            checks = health.during(args.seconds - 1)
            answered = [c for c in checks if c[1] == 200]
            rows.append({"system": system, "offered": s["offered_rate"], "goodput": s["goodput"],
                         "of oracle": s["goodput"] / min(s["offered_rate"], rate), "attainment": s["slo_attainment"],
                         "rejected": counts.get("rejected", 0), "dropped": counts.get("dropped", 0),
                         "errors": counts.get("error", 0) + counts.get("timeout", 0),
                         "health ok": f"{len(answered)}/{len(checks)}",
                         "health worst s": max((c[2] for c in checks), default=float("nan")),
                         "send lag p99 ms": s["send_lag_p99_ms"], "valid": s["validity"]["valid"],
                         "exit": run.returncode})
            print(json.dumps(rows[-1]), flush=True)
    print()
    for row in rows:
        print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if failed:
        print(f"error: {len(failed)} of {len(failed) + len(rows)} runs failed ({', '.join(failed)}); see why above",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
