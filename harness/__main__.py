"""`python -m harness system=symphony workload=bursty`: one run (or a sweep with -m)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from harness.config import register
from harness.errors import HarnessError

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


def check_overrides(argv: list[str]) -> None:
    """Compose the config once before Hydra runs it, so a bad override ends in one clear line."""
    if any(a.startswith("-") for a in argv):
        return                                  # sweeps and Hydra's own flags: Hydra reports those
    from hydra import compose, initialize_config_dir

    overrides = [a for a in argv if not a.startswith(("hydra.", "hydra/", "+hydra"))]
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            compose("config", overrides=overrides)
    except Exception as exc:  # any composition failure is the user's to fix
        detail = "\n".join(str(e) for e in (exc, exc.__cause__) if e is not None)
        print(f"error: {one_line(detail)}", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> float:
    from harness.run import execute, summary_table

    hydra_cfg = HydraConfig.get()
    try:
        summary = execute(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return float("nan")                 # one bad run of a sweep does not stop the others
        sys.exit(2)
    print(summary_table(summary))
    print(f"results: {hydra_cfg.runtime.output_dir}")
    if summary["validity"].get("interrupted"):
        sys.exit(130)                           # records written; the shell still learns it was interrupted
    return summary["goodput"]


if __name__ == "__main__":
    check_overrides(sys.argv[1:])
    main()
