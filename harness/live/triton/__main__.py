"""Prepare a machine for system=triton, and check it.

    python -m harness.live.triton setup [--no-index] [--find-links DIR] [--index-url URL]
    python -m harness.live.triton check
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from harness.errors import ArgumentParser, HarnessError, exit_with
from harness.live.protocol import infer_request, outcome
from harness.live.triton.server import start_triton
from harness.live.triton.stub_env import setup_stub_env, stub_env_needed


def check() -> int:
    """Start tritonserver with one model and send it one request; 0 if it was answered by forward."""
    sizes = []

    def forward(model: str, size: int) -> int:
        sizes.append(size)
        return len(sizes) - 1

    with start_triton({"m": {"max_batch_size": 8}}, {}, forward) as triton:
        req = urllib.request.Request(f"{triton.url}/v2/models/m/infer", data=json.dumps(infer_request(1)).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                code, body = answer.status, answer.read()
        except urllib.error.HTTPError as err:
            code, body = err.code, err.read()
    status, reason, batch_id = outcome(code, body)
    print(f"tritonserver at {triton.url}: {code} {status} {reason} batch {batch_id}")
    return 0 if status == "ok" and batch_id == 0 else 1


def pip_sources(args) -> list[str]:
    """Where pip is to find the stub's numpy: the setup options given, as pip's own flags."""
    for where in args.find_links:
        if "://" not in where and not Path(where).is_dir():
            raise HarnessError(f"--find-links {where}: no such directory; give the directory holding a numpy 1.x "
                               "wheel (or a URL)")
    if args.no_index and not args.find_links:
        raise HarnessError("--no-index needs --find-links DIR: with no index pip has nowhere to find numpy")
    return ([*(["--no-index"] if args.no_index else []), *(f for d in args.find_links for f in ("--find-links", d)),
             *(["--index-url", args.index_url] if args.index_url else []),
             *(f for u in args.extra_index_url for f in ("--extra-index-url", u))])


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m harness.live.triton", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="create the Python backend stub's numpy<2 environment (needed with numpy 2)")
    # pip's package-source options, named here so that a mistyped one is refused, not handed to a pip that
    # never runs when the environment is there already.
    setup.add_argument("--no-index", action="store_true", help="use no package index (offline: with --find-links)")
    setup.add_argument("--find-links", "-f", action="append", default=[], metavar="DIR",
                       help="a directory (or URL) holding a numpy 1.x wheel")
    setup.add_argument("--index-url", "-i", metavar="URL", help="the package index to use instead of PyPI")
    setup.add_argument("--extra-index-url", action="append", default=[], metavar="URL", help="one more package index")
    sub.add_parser("check", help="start tritonserver with one model and send it one request")
    args = parser.parse_args(argv)
    try:
        if args.command == "setup":
            sources = pip_sources(args)
            if not stub_env_needed():
                print(f"numpy {np.__version__}: the stub runs in this environment; nothing to set up")
                return 0
            print(f"Triton stub environment ready at {setup_stub_env(sources)}")
            return 0
        return check()
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    exit_with(main)
