"""Named experiments (conf/experiment/NAME.yaml): run one, find its results, give its title.

A sweep experiment runs `python -m harness -m experiment=NAME
hydra.sweep.dir=results/experiments/NAME/<time>` (in parallel through Hydra's
joblib launcher when hydra-joblib-launcher is installed; any other launcher,
e.g. `hydra/launcher=submitit_slurm`, passes through as an override); an
experiment tagged `search:capacity` or `search:fewest_gpus` runs that search
(harness.search) for every combination of its sweeper params instead.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

from harness import catalog
from harness.errors import HarnessError
from harness.search import SEARCH_TAG


def experiment_file(name: str) -> Path:
    path = catalog.CONF / "experiment" / f"{name}.yaml"
    if not path.is_file():
        raise HarnessError(f"unknown experiment '{name}'; choose one of: {', '.join(catalog.choices('experiment'))}")
    return path


def experiment_title(name: str) -> str:
    """The experiment file's description (its first comment line)."""
    return catalog.describe(experiment_file(name)) or name


def experiment_results(name: str) -> Path:
    return Path("results") / "experiments" / name


def latest_results(name: str) -> Path:
    experiment_file(name)
    done = sorted(p for p in experiment_results(name).glob("*") if p.is_dir())
    if not done:
        raise HarnessError(f"experiment {name} has no results under {experiment_results(name)}; run it: "
                           f"python -m harness.report --experiment {name}")
    return done[-1]


def results_dir(name: str, overrides: list[str]) -> tuple[Path, list[str]]:
    """Where experiment `name` writes its runs: the hydra.sweep.dir the user gives (as Hydra resolves it), else
    results/experiments/<name>/<time>; and the overrides without hydra.sweep.dir, which run_experiment sets."""
    from harness import search

    given = [o for o in overrides if o.split("=", 1)[0] == "hydra.sweep.dir"]
    rest = [o for o in overrides if o not in given]
    if not given:
        return experiment_results(name) / time.strftime("%Y-%m-%d_%H-%M-%S"), rest
    cfg = search.compose(search.plain_overrides([f"experiment={name}", given[-1]], keep_hydra=True), hydra_node=True)
    try:
        results = Path(str(cfg.hydra.sweep.dir))
    except Exception as exc:  # an interpolation only a run can resolve (${hydra.job...})
        raise HarnessError(f"cannot resolve {given[-1]} ({type(exc).__name__}); give a plain directory") from None
    # Runs found there are reported as this experiment's: it must hold none from before.
    if results.exists() and (not results.is_dir() or any(results.iterdir())):
        raise HarnessError(f"hydra.sweep.dir '{results}' is not an empty directory; choose a new one for the "
                           "experiment's runs")
    return results, rest


def run_experiment(name: str, overrides: list[str], jobs: int, target: float) -> tuple[Path, bool]:
    """Run experiment `name` (a sweep, or a search where tagged) into results/experiments/<name>/<time>/ (or
    hydra.sweep.dir where given; --latest does not look there); returns that directory and whether every run
    (or search) finished."""
    from harness import search

    experiment_file(name)
    results, overrides = results_dir(name, overrides)
    base = [f"experiment={name}", *overrides]
    tags = [t for t in search.compose(search.plain_overrides(base)).tags if t.startswith(SEARCH_TAG)]
    if tags:
        kind = tags[0][len(SEARCH_TAG):]
        print(f"experiment {name}: {kind} search per combination -> {results}", flush=True)
        found = search.search_all(kind, base, results, jobs=jobs, target=target)   # the report's target
        failed = [r for r in found if r["status"] == "error"]
        if failed:
            print(f"warning: {len(failed)} of {len(found)} searches failed; the report shows the rest",
                  file=sys.stderr)
        return results, not failed
    quoted = results.as_posix().replace("'", "\\'")
    cmd = [sys.executable, "-m", "harness", "-m", *base, f"hydra.sweep.dir='{quoted}'"]
    if jobs != 1 and not any(o.startswith("hydra/launcher=") for o in overrides):
        if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None:
            cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
        else:
            print("note: hydra-joblib-launcher is not installed; the sweep runs one run at a time", file=sys.stderr)
    print("running: " + " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd)
    if done.returncode != 0:
        if not any(results.rglob("summary.json")):
            raise HarnessError(f"the sweep of experiment {name} failed (exit {done.returncode}) before any run "
                               "finished; see its error above")
        print(f"warning: the sweep of experiment {name} ended with exit {done.returncode}; the report shows the "
              "runs that finished", file=sys.stderr)
    return results, done.returncode == 0
