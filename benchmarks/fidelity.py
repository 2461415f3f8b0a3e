"""Emulated-versus-real goodput of reference runs: each <name>-gpu beside its <name>-emulated.

    python benchmarks/fidelity.py results/reference/h100-mps25x4

Prints a markdown table (goodput, attainment, validity of both, and real / emulated);
the target is real within 10% of emulated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET = 0.10


def main(root: str) -> int:
    runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(root).glob("*/summary.json"))}
    pairs = [n[: -len("-gpu")] for n in runs if n.endswith("-gpu") and n[: -len("-gpu")] + "-emulated" in runs]
    if not pairs:
        print(f"no <name>-gpu / <name>-emulated pairs under {root}", file=sys.stderr)
        return 2
    print("| run | offered (req/s) | real goodput | emulated goodput | real / emulated | real attainment "
          "| emulated attainment | both valid |")
    print("|---|---|---|---|---|---|---|---|")
    for name in pairs:
        real, emu = runs[name + "-gpu"], runs[name + "-emulated"]
        ratio = real["goodput"] / emu["goodput"] if emu["goodput"] else float("nan")
        flag = "" if abs(ratio - 1) <= TARGET else " (over 10%)"
        valid = "yes" if real["validity"]["valid"] and emu["validity"]["valid"] else "NO"
        print(f"| {name} | {real['offered_rate']:,.0f} | {real['goodput']:,.1f} | {emu['goodput']:,.1f} | "
              f"{ratio:.3f}{flag} | {real['slo_attainment']:.2%} | {emu['slo_attainment']:.2%} | {valid} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "results/reference/h100-mps25x4"))
