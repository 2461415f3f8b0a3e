"""What the benchmarks share on the command line: bad arguments told in one line, never a traceback.

    from _cli import Parser, above, at_least, choice, listed, run_main, system_names, writable_file

A benchmark builds its parser with `Parser`, checks numbers with the argparse
types below, and ends with `run_main(main)`: a bad argument is one line
`error: --seconds: must be > 0 (got 0)` and exit 2, as is a HarnessError
raised by the harness. (The benchmarks run as scripts, so this directory is
on sys.path and `_cli` imports as a top-level module; importing it puts the
project on sys.path too, so the harness imports after it.)
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path
from typing import Callable, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the project (harness, systems), from any cwd

from harness.errors import PIPE_CLOSED, ArgumentParser, HarnessError, stdout_gone  # noqa: E402


Parser = ArgumentParser     # a bad argument is one line (`error: <what>; see <prog> --help`), exit 2


def _number(kind: type, ok: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'a whole number' if kind is int else 'a number'} {rule} "
                                             f"(got '{text}')") from None
        if not (math.isfinite(value) and ok(value)):     # (nan fails every comparison: it is refused too)
            raise argparse.ArgumentTypeError(f"must be {rule} (got {text})")
        return value
    return parse


def above(low: float, kind: type = float) -> Callable[[str], float]:
    """An argparse type: a finite number (of `kind`) > low."""
    return _number(kind, lambda v: v > low, f"> {low:g}")


def at_least(low: float, kind: type = int) -> Callable[[str], float]:
    """An argparse type: a finite number (of `kind`) >= low."""
    return _number(kind, lambda v: v >= low, f">= {low:g}")


def listed(item: Callable[[str], float]) -> Callable[[str], list]:
    """An argparse type: values separated by commas, each parsed (and checked) by `item`."""
    def parse(text: str) -> list:
        values = [item(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"give at least one value, separated by commas (got '{text}')")
        return values
    return parse


def writable_file(text: str) -> Path:
    """An argparse type: a file the benchmark can write when it has measured (checked before it measures, so a
    bad path loses nothing); its directory is made if missing."""
    from harness.records import check_writable_dir      # (records imports pandas: only where --json is given)

    path = Path(text)
    try:
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"'{text}' is a directory; give a file name")
        check_writable_dir(path.parent)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write '{text}' ({exc.strerror}); give a path in a writable "
                                         "directory") from None
    return path


def choice(what: str, allowed) -> Callable[[str], str]:
    """An argparse type (for `listed`): one of `allowed`, the error naming them all."""
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"unknown {what} '{text}'; choose from: {', '.join(allowed)}")
        return text
    return parse


def system_names(text: str) -> list[str]:
    """An argparse type: systems separated by commas, or `all`; each must name a policy (checked before any run)."""
    import systems

    names = systems.names() if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"name at least one system (got '{text}')")
    for name in names:
        try:
            systems.policy_class(name)
        except HarnessError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return names


def require_cuda() -> None:
    """The GPU benchmarks measure with PyTorch on a CUDA GPU: without either, say how to get it."""
    try:
        for name in ("torch", "torchvision"):
            importlib.import_module(name)
    except ImportError as exc:
        raise HarnessError(f"this benchmark needs PyTorch, torchvision and an NVIDIA GPU ({exc}); run it on a GPU "
                           'host after pip install -e ".[gpu]"') from None
    if not importlib.import_module("torch").cuda.is_available():
        raise HarnessError("this benchmark needs a CUDA GPU (torch.cuda.is_available() is False); run it on a GPU host")


def child_error(stderr: str) -> str:
    """Why a harness command run as a child failed, in one line: its `error:` line (the harness says one), else
    the last line it printed."""
    lines = stderr.strip().splitlines() or ["(no output)"]
    said = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return (said or lines)[-1]


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """sys.exit(main()), with a HarnessError told as `error: <message>` and exit 2, not a traceback."""
    try:
        code = main()
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except BrokenPipeError:             # the reader went away (`| head`): no traceback, and not done
        stdout_gone()
        code = PIPE_CLOSED
    sys.exit(code)
