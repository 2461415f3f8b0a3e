"""`python -m harness system=symphony workload=bursty`: one run (or a sweep with -m)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from harness.config import register
from harness.errors import HarnessError, say

CONF = Path(__file__).resolve().parent.parent / "conf"
# Lines of Hydra's error text that are noise on a command line.
_NOISE = ("Set the environment variable HYDRA_FULL_ERROR", "full_key:", "reference_type=", "object_type=",
          "Config search path", "provider=", "To append to your config use")

register()


def one_line(message: str) -> str:
    """Hydra explains a bad override over several lines; keep what names the problem and the fix."""
    lines = [ln.strip() for ln in message.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(_NOISE)]
    if len(lines) > 1 and lines[1].startswith("Available options"):
        return f"{lines[0]}; available: {', '.join(lines[2:])}"
    return "; ".join(lines)


def check_overrides(argv: list[str]) -> tuple[list[str], Path | None]:
    """Before Hydra runs: compose the config once, so a bad override ends in one clear line, and claim the run
    (or sweep) directory, so that Hydra writes nothing into one that holds a run or is in use.

    Returns the arguments for Hydra, the claimed directory pinned (its default name holds the time), and
    the sweep's directory (None for a single run).
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from harness import rundir
    from harness.search import hydra_overrides, plain_overrides

    flags = [a for a in argv if a.startswith("-")]
    if set(flags) - {"-m", "--multirun"}:
        return argv, None                       # Hydra's own flags (--help, --cfg, ...): Hydra answers those
    sweep = bool(flags)
    kind, key = (rundir.SWEEP, "hydra.sweep.dir") if sweep else (rundir.RUN, "hydra.run.dir")
    try:
        overrides = hydra_overrides([a for a in argv if a not in flags])
        try:
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                cfg = compose("config", overrides=plain_overrides(overrides, keep_hydra=True) if sweep else overrides,
                              return_hydra_config=True)
        except Exception as exc:  # any composition failure is the user's to fix
            if sweep:                           # a key may exist for some swept values only: Hydra judges each run
                return flags + overrides, None
            raise HarnessError(one_line("\n".join(str(e) for e in (exc, exc.__cause__) if e is not None))) from None
        if not sweep and not OmegaConf.select(cfg, "models", default=None):
            raise HarnessError("no models configured; choose a models group, e.g. models=vision")
        try:
            directory = OmegaConf.select(cfg, key)
        except OmegaConfBaseException:          # a name only Hydra can give (${hydra:...}): the run claims it itself
            return flags + overrides, None
        if not str(directory or "").strip():
            raise HarnessError(f"{key} is empty; give a directory for the {kind.name}, or leave {key} out for a "
                               "new one under results/")
        rundir.claim(kind, Path(directory))
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    quoted = directory.replace("'", "\\'")
    pinned = [*flags, *(o for o in overrides if not o.startswith(f"{key}=")), f"{key}='{quoted}'"]
    return pinned, Path(directory) if sweep else None


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> float:
    from harness import rundir
    from harness.run import execute, summary_table

    signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM ends a run as Ctrl-C does, the sim's too
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        summary = execute(cfg, out_dir, list(hydra_cfg.overrides.task))
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if in_sweep:
            return float("nan")                 # one bad run of a sweep does not stop the others; its status says
        rundir.abandon(out_dir)                 # what it wrote before the check (its config, its schedule) would
        sys.exit(2)                             # make the same directory refuse the corrected command
    except KeyboardInterrupt:                   # the sim, or a live run before it served: no half-written run stays
        print(f"interrupted: {rundir.abandon(out_dir)}", file=sys.stderr)
        sys.exit(rundir.INTERRUPTED)
    say(summary_table(summary))
    say(f"results: {out_dir}")
    if summary["validity"]["interrupted"]:
        sys.exit(rundir.INTERRUPTED)            # records written; the shell still learns it was interrupted
    if rundir.failures(summary) and not in_sweep:
        print(f"error: something broke during the run (see 'valid' above); what it measured is in {out_dir}",
              file=sys.stderr)
        sys.exit(rundir.BROKE)
    return summary["goodput"]


if __name__ == "__main__":
    if sys.argv[1:2] == ["list"] or {"--help", "-h"} & set(sys.argv[1:]):     # answered without composing
        from harness import catalog

        sys.exit(catalog.main(sys.argv[1:]))
    if {"-m", "--multirun"} & set(sys.argv[1:]):          # a sweep ends with a table comparing its runs
        sys.argv.append("+hydra.callbacks.comparison._target_=harness.report.terminal.SweepTable")
    try:
        sys.argv[1:], sweep_dir = check_overrides(sys.argv[1:])
        main()
    except KeyboardInterrupt:                   # outside any run (starting, between a sweep's runs): nothing to keep
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if sweep_dir is not None:                   # a single run has exited by now unless it ran to its end
        from harness.rundir import sweep_status

        status, line = sweep_status(sweep_dir)
        if line:
            print(line, file=sys.stderr)
        sys.exit(status)
