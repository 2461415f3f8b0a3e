"""Real against emulated GPUs, repeated over seeds: each system's goodput on the GPU and on its emulation.

    python benchmarks/real_vs_emulated.py --out DIR [--systems eager,symphony,...] [--clusters mps25x4,whole]
        [--loads reference,overload] [--seeds 0,1,2] [--gpu-type h200] [--stop-after-s 540] [--keep batches]
        [overrides...]
    python benchmarks/real_vs_emulated.py --out DIR --table      # only the table of what DIR holds
    python benchmarks/real_vs_emulated.py --out DIR1 --out DIR2 --table   # of several calls' DIRs as one
    python benchmarks/real_vs_emulated.py --out DIR --sim CALIBRATION   # add the sim's twins (no GPU needed)
    python benchmarks/real_vs_emulated.py --out DIR1 --out DIR2 --sim own   # twins in each, one table of both
    python benchmarks/real_vs_emulated.py --out DIR --sim own --sim-repeats 4   # four twins a real run

On a GPU host, each run of `experiment=reference_gpu` (live, real HTTP and
Locust, the vision models, bursty load) is made twice in a row: on the GPU
(`cluster=auto`) and emulated from the same profiles
(`cluster.gpu_type=<gpu-type>`), same host, same settings.

- clusters: `mps25x4`, the GPU as four 25% MPS shares; `whole`, the whole GPU.
- loads: `reference`, the experiment's rate; `overload`, 1.5 x eager's
  capacity on that cluster, found once by a capacity search in the sim on
  the emulated cluster (kept in DIR/<cluster>/eager-capacity.json).
- seeds: `seeds.schedule`, `seeds.mapping` and `seeds.runtime` all set to k;
  Locust workers sized to each schedule (`runtime.locust_workers=-1`).

Runs go seed by seed, so a call cut short has every system at the first
seeds. A run whose summary is in DIR already is not made again, so the
matrix can be filled over several calls (`--stop-after-s`: start no run
after that many seconds), and the directories of several hosts' calls merged
into one DIR. Both sides depend on the GPU's profile (the emulated one runs
it; on both, the policy plans with it), so a run made with another profile
than the one now in profiles/ is made again, the old run kept beside it as
`<run>.profile-<its profile's date>`. The overload rate stays the one found
first, so runs before and after a re-measured profile are offered the same.

Each real run's own delays (the host at the run's load) are written beside
it as `calibration.json` (`python -m harness.calibrate --from-run`): an idle
host's calibration is not a loaded one's, and the per-request records it is
measured from stay on the host. What a run does not measure (the dispatch hop
where its slots never idled before a dispatch, as Clockwork's past capacity)
comes from another real run of the same cluster and load on the same host
(the file names those parts, `run.from_base`); a Triton run takes none (its
path is tritonserver's).

`--keep batches` deletes each run's per-request records once it is made (and
a real run's calibration written from them): `requests.parquet`,
`server_requests.parquet`, `schedule.parquet` and the load generator's log
under `client/` (at 8,200 req/s on the H100's shares `requests.parquet` alone
was 7.7 MB a run), where its batches, summary, config and logs are under
1 MB. (The client's shards and the server's copies of the tables, which
once packed nine runs to 33 MB, every live run deletes once its summary is
written.) What
the table, `--sim` and a later run's calibration read stays; a run's
latency figures and a new calibration from its records do not.

`--sim CALIBRATION` makes, on any machine, the sim's twin of each real run
DIR holds of the systems, clusters, loads and seeds given
(`<system>-seed<k>-sim`): the same overrides in the discrete-event runtime,
emulating the same profile, charging the live path's delays that
CALIBRATION measured (`python -m harness.calibrate` on the GPU host). A real
run made with another profile than the one in profiles/ gets none. `--sim
own` charges each real run's own delays (its `calibration.json`: the host at
that run's load); a run without one gets no twin, and its line says how to
write one or name one. A twin made with another calibration file is made
again (one made with another profile is kept beside it, as a real run is).
With several `--out`, each gets its runs' twins and the table is of them all,
as with `--table`. `--sim-repeats N` makes N twins of each real run
(`<system>-seed<k>-sim`, then `-sim-r1` ...), each drawing the delays and
the execution's spread with its own runtime seed (k, k + 1000, ...) over
the same arrivals: past capacity a deadline-aware policy's goodput moves
with those draws (Clockwork's twins of one H100 run at 1.5 x: 6,940-7,584
req/s over eight runtime seeds), so one twin is one draw, and real / sim
is judged against their mean.

The table gives, per cluster, load, system and profile, the mean over seeds
of real / emulated goodput with its 95% confidence interval and the mean gap
(real - emulated) over the offered rate, and flags those more than 5% from 1
or with an invalid run; `real / sim`, where every seed has its sim twin (the
mean of each seed's real over the mean of its twins, with its 95% CI over
seeds and how many twins), is flagged the same way (`sim within 5%`). A
pair whose two sides were made with different profiles is left out, and said
so. DIR/real_vs_emulated.csv holds the table, DIR/real_vs_emulated.png (and
.pdf) draws both ratios per system, a panel per cluster and load, against
the 5% band. With `--table`, `--out` may be named several times: the
directories are read as one, a pair made in more than one taken from the
last named, and the table written to that one.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

# This directory, for _cli (which puts the project on sys.path), also where a test loads this file by its path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import Parser, above, at_least, child_error, choice, listed, run_main, system_names  # noqa: E402
from harness.assembly import detect_gpus  # noqa: E402
from harness.calibrate import describe, from_run, load_calibration  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.gpu.partitions import gpu_type_from_name  # noqa: E402
from harness.profiles import load_profile, profile_path  # noqa: E402
from harness.records import scheduler_busy, write_json  # noqa: E402
from harness.report import figures  # noqa: E402
from harness.report.analysis import mean_ci  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = "eager,symphony,nexus,clockwork,shepherd,triton"
CLUSTERS = {"mps25x4": [], "whole": ["cluster.partition=whole", "cluster.count=1"]}
PARTITIONS = {"mps25x4": "mps25", "whole": "whole"}          # each cluster's share, whose profile both sides use
LOADS = ("reference", "overload")
SIDES = ("gpu", "emulated")
TARGET = 0.05
OVERLOAD = 1.5
OWN = "own"             # --sim own: each real run's own calibration.json
RUNTIME_SEED_STRIDE = 1000   # between the runtime seeds of a real run's sim twins (--sim-repeats)


def run_dir(out: Path, cluster: str, load: str, system: str, seed: int, side: str) -> Path:
    return out / cluster / load / f"{system}-seed{seed}-{side}"


def made_with(summary: dict) -> dict:
    """The record of the profile a run was made with, as its summary keeps it ({} where it kept none)."""
    profiles = (summary.get("provenance") or {}).get("profiles") or {}
    return profiles.get(f"{summary.get('gpu_type')}/{summary.get('partition')}") or {}


def same_profile(a: dict, b: dict) -> bool:
    """Two records name the same measurement: the same file digest where both have one (runs keep it
    from the version that added it on), else the same date of measurement."""
    if a.get("sha256") and b.get("sha256"):
        return a["sha256"] == b["sha256"]
    return a.get("date") == b.get("date")


def current_profile(gpu_type: str, cluster: str) -> dict:
    """The record of the profile a run on `cluster` would be made with now."""
    profile = load_profile(profile_path(gpu_type, PARTITIONS[cluster]))
    return {"sha256": profile.digest, "date": profile.provenance.get("date")}


def _summary(where: Path) -> dict | None:
    try:
        return json.loads((where / "summary.json").read_text())
    except FileNotFoundError:
        return None


def plan(out: Path, systems: list[str], clusters: list[str], loads: list[str], seeds: list[int],
         current: dict[str, dict] | None = None) -> list[tuple]:
    """The runs still to make, in order: seed by seed, each system's real run then its emulated one. A run
    is to make where it has no summary, or (given `current`, each cluster's profile record) where it was
    made with another profile."""
    def made(where: Path, cluster: str) -> bool:
        summary = _summary(where)
        return summary is not None and (current is None or same_profile(made_with(summary), current[cluster]))

    return [(c, load, s, k, side) for k in seeds for c in clusters for load in loads for s in systems
            for side in SIDES if not made(run_dir(out, c, load, s, k, side), c)]


def set_aside(where: Path) -> Path | None:
    """Move a run made with another profile out of the table's way, named by its profile's date (a run
    measured is never deleted); None where there is no finished run to move."""
    summary = _summary(where)
    if summary is None:
        return None
    stamp = str(made_with(summary).get("date") or "unknown").replace(":", "-")
    target, n = where.with_name(f"{where.name}.profile-{stamp}"), 1
    while target.exists():
        n += 1
        target = where.with_name(f"{where.name}.profile-{stamp}-{n}")
    return where.rename(target)


def harness(*overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def eager_capacity(out: Path, cluster: str, gpu_type: str, extra: list[str]) -> float:
    """Eager's capacity on the emulated cluster, from a sim capacity search (made once, then read)."""
    path = out / cluster / "eager-capacity.json"
    if not path.exists():
        search = out / cluster / "eager-capacity-search"
        done = subprocess.run([sys.executable, "-m", "harness.search", "capacity", "experiment=reference_gpu",
                               "runtime=sim", "system=eager", f"cluster.gpu_type={gpu_type}", *CLUSTERS[cluster],
                               *extra, "--out", str(search)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise SystemExit(f"error: eager's capacity search on {cluster} failed: {done.stderr.strip()[-400:]}")
        found = json.loads((search / "search.json").read_text())
        path.parent.mkdir(parents=True, exist_ok=True)
        if found.get("status") != "found":
            raise SystemExit(f"error: eager's capacity search on {cluster} ended {found.get('status')}; see {search}")
        path.write_text(json.dumps({"capacity": found["answer"], "search": search.name}) + "\n")   # beside it
        # search.json keeps every probe's rate and result; the probes' own records (about 50 MB of sim
        # runs) are not what this benchmark reports, and would swell a directory meant to be committed.
        shutil.rmtree(search / "probes", ignore_errors=True)
    return float(json.loads(path.read_text())["capacity"])


# What `--keep batches` deletes: a run's per-request records and the load generator's log.
RECORDS = ("requests.parquet", "server_requests.parquet", "schedule.parquet", "client")


def one_run(out: Path, cluster: str, load: str, system: str, seed: int, side: str, rate: float | None,
            gpu_type: str, extra: list[str], keep: str = "all") -> str:
    where = run_dir(out, cluster, load, system, seed, side)
    moved = set_aside(where)
    # Locust sized to each schedule's busiest second (the experiment's four workers fall behind past capacity).
    overrides = ["experiment=reference_gpu", f"system={system}", *CLUSTERS[cluster], "runtime.locust_workers=-1",
                 *([f"workload.rate={rate:.1f}"] if rate else []),
                 f"seeds.schedule={seed}", f"seeds.mapping={seed}", f"seeds.runtime={seed}",
                 *([f"cluster.gpu_type={gpu_type}"] if side == "emulated" else []), *extra,
                 f"hydra.run.dir={where}"]
    done = harness(*overrides)
    if not (where / "summary.json").exists():
        return f"no summary ({done.stderr.strip()[-300:]})"
    summary = json.loads((where / "summary.json").read_text())
    if side == "gpu" and summary["emulated"]:
        (where / "summary.json").rename(where / "summary-emulated.json")   # never counted as a real run
        raise SystemExit(f"error: the GPU side ran on emulated slots ({summary.get('notes')}); see {where}")
    ready = summary.get("ready_seconds")      # where a run's time goes besides its schedule
    busy = scheduler_busy(where)              # near 1 the live scheduler, not the policy, set the pace
    calibrated = calibrate_beside(where) if side == "gpu" else None      # (from the records, so first)
    if keep == "batches":
        for name in RECORDS:
            path = where / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return (f"{served(summary)}, valid {summary['validity']['valid']}"
            + (f", ready after {ready:.1f} s" if ready is not None else "")
            + (f", scheduler loop {busy['loop_share']:.2f} (CPU {busy['cpu_share']:.2f})"
               if "loop_share" in busy else "")
            + (f"; {calibrated}" if calibrated else "")
            + (f" (the run made with the profile before is now {moved.name})" if moved else ""))


def served(summary: dict) -> str:
    """Goodput, with the mean batch and the share dropped: past capacity a deadline-aware policy can settle in
    small batches that drop more (Clockwork's runs swing so by 10% from seed to seed), which these show."""
    return (f"goodput {summary['goodput']:,.1f} req/s (mean batch {summary.get('mean_batch_size', math.nan):.1f}, "
            f"dropped {summary.get('drop_rate', math.nan):.1%})")


def calibrate_beside(run: Path) -> str:
    """Write the run's own delays (this host at this load) beside it, as `calibration.json`: its per-request
    records stay on the host, and an idle host's calibration is not a loaded one's (the dispatch hop of a
    16-core H100 host was 0.08 ms at 9,000 req/s, an idle H200 host's 0.28 ms). What a run's records do
    not measure (no slot idle before a dispatch: Clockwork past capacity) comes from another real run of
    the same cluster and load on this host (`same_host_base`); a run with neither gets none. What
    happened, a line."""
    try:
        try:
            doc = from_run(run)
        except HarnessError:
            base = same_host_base(run)
            if base is None:
                raise
            doc = from_run(run, base)
        write_json(doc, run / "calibration.json")
    except HarnessError as exc:
        return f"no calibration ({exc})"
    except Exception as exc:  # a by-product: the runs still to make matter more than this one's delays
        return f"no calibration ({type(exc).__name__}: {exc})"
    return f"wrote calibration.json: {describe(doc)}"


def same_host_base(run: Path) -> Path | None:
    """The latest calibration.json, measured whole, of another real run beside `run` (the same cluster and
    load) on the same host: the delays `run` does not measure, as close as this host gives them. None for a
    Triton run (its path is tritonserver's, which the other systems' runs do not take) or where there is none."""
    host = ((_summary(run) or {}).get("provenance") or {}).get("host")
    if not host or run.name.startswith("triton-"):
        return None
    found = []
    for path in run.parent.glob("*-gpu/calibration.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        made = doc.get("run") if isinstance(doc.get("run"), dict) else {}
        if (path.parent != run and not path.parent.name.startswith("triton-") and not made.get("from_base")
                and (doc.get("host") or {}).get("name") == host):
            found.append(path)
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def real_runs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/*/*-seed*-gpu/summary.json"))


def twin(real_run: Path, side: str) -> Path:
    """The directory of a real run's twin on `side` (emulated, sim)."""
    return real_run.with_name(real_run.name[: -len("gpu")] + side)


def sim_twin(real_run: Path, repeat: int) -> Path:
    """The directory of a real run's sim twin `repeat` (0: `<run>-sim`; k: `<run>-sim-r<k>`)."""
    return twin(real_run, "sim" if repeat == 0 else f"sim-r{repeat}")


def repeat_seed(real: dict, repeat: int) -> int:
    """The runtime seed of a real run's sim twin `repeat`: its own for the first, then one apart by
    RUNTIME_SEED_STRIDE each, so a twin's delays and spread are drawn afresh over the same arrivals."""
    return int(real["seeds"]["runtime"]) + RUNTIME_SEED_STRIDE * repeat


def selected(real_run: Path, systems: list[str], clusters: list[str], loads: list[str], seeds: list[int]) -> bool:
    """Whether a real run is one of the systems, clusters, loads and seeds asked for."""
    system, seed = real_run.name[: -len("-gpu")].rsplit("-seed", 1)
    return (system in systems and real_run.parents[1].name in clusters and real_run.parent.name in loads
            and int(seed) in seeds)


def _from_root(path: Path) -> Path:
    """`path` as the runs (started in the project's root) read it: relative to the root where it lies inside,
    so the twins' configs and summaries name no machine's directories."""
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def sim_overrides(real: dict, calibration: Path, repeat: int = 0) -> list[str]:
    """The overrides that run a real run (its summary) again in the sim, charging the calibrated delays; a
    repeat draws them (and the execution's spread) with its own runtime seed over the same arrivals."""
    dropped = ("hydra.", "runtime=", "cluster.gpu_type=", "runtime.calibration=") + (("seeds.runtime=",) if repeat
                                                                                    else ())
    kept = [o for o in real["provenance"]["overrides"] if not o.startswith(dropped)]
    return [*kept, "runtime=sim", f"cluster.gpu_type={real['gpu_type']}",
            f"runtime.calibration={_from_root(calibration)}",
            *([f"seeds.runtime={repeat_seed(real, repeat)}"] if repeat else [])]


def calibrated_with(sim: dict) -> str | None:
    """The calibration file a sim twin (its summary) charged, as its overrides name it."""
    named = [o.split("=", 1)[1] for o in sim["provenance"]["overrides"] if o.startswith("runtime.calibration=")]
    return named[-1] if named else None


def sim_twins(out: Path, calibration: Path | None, extra: list[str], chosen=lambda real_run: True,
              repeats: int = 1, say=lambda line: None) -> list[str]:
    """Make the `repeats` sim twins of each real run `out` holds (of those `chosen`) that it lacks of its profile
    and `calibration` (None: each real run's own calibration.json); what happened, a line each, each also
    given to `say` as it happens (a directory's twins can take minutes)."""
    said = []
    for real_run in filter(chosen, real_runs(out)):
        for repeat in range(repeats):
            line = _sim_twin(out, real_run, repeat, calibration, extra)
            if line is not None:
                said.append(line)
                say(line)
    return said


def _sim_twin(out: Path, real_run: Path, repeat: int, calibration: Path | None, extra: list[str]) -> str | None:
    """Make a real run's sim twin `repeat` unless it has it; its line, or None (had it, or said for the first)."""
    real = _summary(real_run)
    where, name = sim_twin(real_run, repeat), str(real_run.relative_to(out))[: -len("-gpu")]
    charged = calibration or real_run / "calibration.json"
    made = _summary(where)
    if (made is not None and same_profile(made_with(made), made_with(real))
            and calibrated_with(made) == str(_from_root(charged))):
        return None
    if not same_profile(made_with(real), current_profile(real["gpu_type"], real_run.parents[1].name)):
        return None if repeat else f"{name}: made with another profile than profiles/ holds now; no sim twin"
    if calibration is None:
        try:
            load_calibration(charged)
        except HarnessError as exc:   # one run's missing or bad file stops no other twin
            if repeat:
                return None           # (said once, for its first twin)
            # Missing: its records measured too little on the GPU host.
            why = str(exc) if charged.exists() else "no calibration.json beside its real run"
            return (f"{name}: no sim twin with its own delays ({why}); write one (python -m "
                    f"harness.calibrate --from-run {real_run} --base CALIBRATION --out {charged}) or name "
                    f"one: --sim CALIBRATION --systems {real_run.name.rsplit('-seed', 1)[0]}")
    if made is not None and same_profile(made_with(made), made_with(real)):
        shutil.rmtree(where)          # the twin of another calibration: made again from its config
    set_aside(where)                  # one of another profile is kept beside, as the real runs are
    done = harness(*sim_overrides(real, charged, repeat), *extra, f"hydra.run.dir={where}")
    sim = _summary(where)
    label = f"{name} sim" + (f" (runtime seed {repeat_seed(real, repeat)})" if repeat else "")
    return f"{label}: " + (f"{served(sim)} (real {real['goodput']:,.1f})" if sim
                           else f"no summary ({child_error(done.stderr)})")


def table(*outs: Path) -> pd.DataFrame:
    """One row per cluster, load, system and profile of the pairs the directories `outs` hold (a pair in
    several read from the last); `attrs["mixed"]` names the pairs left out, whose two sides were made with
    different profiles."""
    rows, mixed = [], []
    latest = {str(run.relative_to(out))[: -len("-gpu")]: run for out in outs for run in real_runs(out)}
    for name, real_run in sorted(latest.items()):
        real, emu = _summary(real_run), _summary(twin(real_run, "emulated"))
        if emu is None:
            continue
        if not same_profile(made_with(real), made_with(emu)):
            mixed.append(name)
            continue
        sims = sim_goodputs(real_run, real)
        system, seed = real_run.name[: -len("-gpu")].rsplit("-seed", 1)
        rows.append({"cluster": real_run.parents[1].name, "load": real_run.parent.name, "system": system,
                     "profile": made_with(real).get("date") or "unknown",
                     "seed": int(seed), "offered": real["offered_rate"], "real": real["goodput"],
                     "emulated": emu["goodput"],
                     "ratio": real["goodput"] / emu["goodput"] if emu["goodput"] else math.nan,
                     # Over the mean of its twins: each draws the delays afresh over the same arrivals.
                     "real / sim": real["goodput"] / (sum(sims) / len(sims)) if sims and all(sims) else math.nan,
                     "sim twins": len(sims),
                     # Beside the goodput, where a gap comes from: SLOs met and the median latency of each side.
                     **{f"{side} {name}": got.get(key, math.nan)
                        for side, got in (("real", real), ("emulated", emu))
                        for name, key in (("attainment", "slo_attainment"), ("p50 ms", "latency_p50_ms"))},
                     "valid": real["validity"]["valid"] and emu["validity"]["valid"]})
    result = pd.DataFrame()
    if rows:
        result = pd.DataFrame(_per_system(pd.DataFrame(rows)))
    result.attrs["mixed"] = mixed
    return result


def sim_goodputs(real_run: Path, real: dict) -> list[float]:
    """The goodputs of a real run's sim twins made with its profile and with the calibration its first twin
    charged (a repeat left from an older calibration is not one of them); none without a first twin."""
    first = _summary(sim_twin(real_run, 0))
    if first is None or not same_profile(made_with(real), made_with(first)):
        return []
    repeats = (_summary(p) for p in real_run.parent.glob(f"{sim_twin(real_run, 0).name}-r*"))
    return [first["goodput"]] + [s["goodput"] for s in repeats
                                 if s is not None and same_profile(made_with(real), made_with(s))
                                 and calibrated_with(s) == calibrated_with(first)]


def _per_system(per_seed: pd.DataFrame) -> list[dict]:
    out_rows = []
    for (cluster, load, system, profile), g in per_seed.groupby(["cluster", "load", "system", "profile"],
                                                                sort=False):
        mean, ci = mean_ci(g["ratio"])
        within = abs(mean - 1) <= TARGET
        sim, sim_ci = mean_ci(g["real / sim"]) if g["real / sim"].notna().all() else (math.nan, math.nan)
        out_rows.append({"cluster": cluster, "load": load, "system": system, "profile": profile, "seeds": len(g),
                         "offered": g["offered"].mean(), "real goodput": g["real"].mean(),
                         "emulated goodput": g["emulated"].mean(), "real / emulated": mean, "95% CI +-": ci,
                         # The gap against what was offered: where both sides serve almost nothing (a
                         # system past collapse) the ratio is one of two small numbers, this is not.
                         "gap / offered": ((g["real"] - g["emulated"]) / g["offered"]).mean(),
                         "real / sim": sim, "sim CI +-": sim_ci, "sim twins": int(g["sim twins"].sum()),
                         **{c: g[c].mean() for c in ("real attainment", "emulated attainment", "real p50 ms",
                                                     "emulated p50 ms")},
                         "within 5%": "yes" if within and g["valid"].all() else
                         ("no" if g["valid"].all() else "invalid run"),
                         # The sim judged as the emulation is (blank where a seed has no twin): the two
                         # predict the GPU by different means, and one can hold where the other fails.
                         "sim within 5%": "" if math.isnan(sim) else "yes" if abs(sim - 1) <= TARGET else "no"})
    return out_rows


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, action="append", required=True,
                    help="the runs' directory (made, or added to); with --table or --sim, several may be named, "
                         "read as one")
    ap.add_argument("--systems", type=system_names, default=SYSTEMS)
    ap.add_argument("--clusters", type=listed(choice("cluster", CLUSTERS)), default=",".join(CLUSTERS))
    ap.add_argument("--loads", type=listed(choice("load", LOADS)), default=",".join(LOADS))
    ap.add_argument("--seeds", type=listed(at_least(0)), default="0,1,2")
    ap.add_argument("--gpu-type", help="the GPU's type, whose profiles both sides use (default: this host's GPU; "
                    "another is refused)")
    ap.add_argument("--stop-after-s", type=above(0), default=math.inf, help="start no run after this many seconds")
    ap.add_argument("--keep", choices=("all", "batches"), default="all",
                    help="batches: delete each run's per-request records once it is made (its calibration written "
                         "first), keeping its batches, summary, config and logs")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--table", action="store_true", help="print the table of what --out holds, run nothing")
    only.add_argument("--sim", metavar="CALIBRATION",
                      help="make the sim twins of the real runs --out holds, charging the live path's delays this "
                           "calibration file measured on the GPU host, or 'own': each real run's calibration.json "
                           "(no GPU needed), then print the table")
    ap.add_argument("--sim-repeats", type=at_least(1), default=1,
                    help="with --sim: twins per real run, each drawing the delays and the execution's spread with "
                         "its own runtime seed over the same arrivals; real / sim is over their mean (past "
                         "capacity one twin of Clockwork's moved by up to 5%%)")
    args, extra = ap.parse_known_args(argv)
    outs, args.out = args.out, args.out[-1]
    if len(outs) > 1 and not args.table and args.sim is None:
        raise HarnessError("several --out directories are read as one by --table and --sim only; runs on the GPU "
                           "go to one: name one --out")
    if args.sim_repeats != 1 and args.sim is None:
        raise HarnessError(f"--sim-repeats {args.sim_repeats} makes sim twins: give it with --sim CALIBRATION or "
                           "--sim own")
    calibration = None if args.sim in (None, OWN) else Path(args.sim)
    if calibration is not None:
        load_calibration(calibration)        # a bad file is one error, not one per run
    missing = [str(out) for out in outs if not out.is_dir()] if args.table or args.sim is not None else []
    if missing:                              # (runs make theirs)
        raise HarnessError(f"--out {', '.join(missing)} is not a directory of real runs; name the ones the GPU "
                           "runs went to")
    if args.sim is not None:
        chosen = functools.partial(selected, systems=args.systems, clusters=args.clusters, loads=args.loads,
                                   seeds=args.seeds)
        for out in outs:
            sim_twins(out, calibration, extra, chosen, args.sim_repeats, say=functools.partial(print, flush=True))
    elif not args.table:
        gpus = detect_gpus()
        if not gpus:
            raise HarnessError("no NVIDIA GPU here (NVML sees none): run this on a GPU host, or --table to read "
                               f"what {args.out} holds")
        here = gpu_type_from_name(gpus[0])
        if args.gpu_type not in (None, here):
            raise HarnessError(f"--gpu-type {args.gpu_type}, but this host's GPU is {here} ({gpus[0]}): the real "
                               f"side runs on it; pass --gpu-type {here} or leave it out")
        args.gpu_type = here
        current = {cluster: current_profile(here, cluster) for cluster in args.clusters}
        todo = plan(args.out, args.systems, args.clusters, args.loads, args.seeds, current)
        started = time.monotonic()
        rates: dict[tuple[str, str], float | None] = {}
        for i, (cluster, load, system, seed, side) in enumerate(todo):
            if time.monotonic() - started > args.stop_after_s:
                print(f"stopped after {args.stop_after_s:g} s: {len(todo) - i} runs left (run again to go on)")
                break
            if (cluster, load) not in rates:
                rates[cluster, load] = (OVERLOAD * eager_capacity(args.out, cluster, args.gpu_type, extra)
                                        if load == "overload" else None)
            said = one_run(args.out, cluster, load, system, seed, side, rates[cluster, load], args.gpu_type, extra,
                           args.keep)
            print(f"[{time.monotonic() - started:5.0f} s] {cluster} {load} {system} seed {seed} {side}: {said}",
                  flush=True)
    result = table(*outs)
    if result.empty:
        print(f"no real / emulated pairs under {', '.join(map(str, outs))} yet")
    else:
        result.to_csv(args.out / "real_vs_emulated.csv", index=False)
        print(result.to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
        figure = figures.fidelity(result, figures.styles(result["system"]), TARGET)
        print(f"wrote {', '.join(figures.save(figure, args.out, 'real_vs_emulated'))} in {args.out}")
    if result.attrs["mixed"]:
        print(f"left out, their two sides made with different profiles (run again to remake the older side): "
              f"{', '.join(result.attrs['mixed'])}")
    return 0


if __name__ == "__main__":
    run_main(main)
