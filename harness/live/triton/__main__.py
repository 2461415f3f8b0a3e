"""python -m harness.live.triton setup [pip options] | check: prepare a machine for system=triton, and check it."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import numpy as np

from harness.errors import ArgumentParser, HarnessError
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = ArgumentParser(prog="python -m harness.live.triton", description=__doc__.split(":")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="create the Python backend stub's numpy<2 environment (needed with numpy 2); "
                                 "what follows goes to pip, e.g. setup --no-index --find-links DIR")
    sub.add_parser("check", help="start tritonserver with one model and send it one request")
    # Everything after `setup` is pip's (argparse would take --no-index for an option of its own).
    pip_args = argv[1:] if argv[:1] == ["setup"] else []
    args = parser.parse_args(argv[:1] if argv[:1] == ["setup"] else argv)
    try:
        if args.command == "setup":
            if not stub_env_needed():
                print(f"numpy {np.__version__}: the stub runs in this environment; nothing to set up")
                return 0
            print(f"Triton stub environment ready at {setup_stub_env(pip_args)}")
            return 0
        return check()
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
