"""`python -m harness system=symphony workload=bursty`: one run (or a sweep with -m)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from harness.config import register
from harness.errors import HarnessError

register()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> float:
    from harness.run import execute, summary_table

    hydra_cfg = HydraConfig.get()
    try:
        summary = execute(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(summary_table(summary))
    print(f"results: {hydra_cfg.runtime.output_dir}")
    return summary["goodput"]


if __name__ == "__main__":
    main()
