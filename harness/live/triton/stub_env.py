"""The Python backend stub's numpy<2 environment.

The stub in the nvidia-pytriton wheel (0.5.7: Triton 2.45) is built with
pybind11 older than 2.12, which reads a dtype's item size at its numpy-1
offset in PyArray_Descr; under numpy 2 that offset holds the low half of the
64-bit `flags` field, 0 for numeric dtypes. Every INT32/INT64 output then has
byte size 0, and Triton answers 500 "output tensor shape does not match size
of output". No dtype, shape or layout of our outputs avoids it: the stub
builds that array itself. Only the stub needs numpy<2 (our model code in it
imports nothing else), so it runs in a side environment, a venv of this
interpreter holding numpy<2, made once by

    python -m harness.live.triton setup [pip options, e.g. --no-index --find-links wheels/]

With numpy<2 here, the stub uses this environment and nothing is made.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import numpy as np

from harness.errors import HarnessError

STUB_ENV_VAR = "HARNESS_TRITON_STUB_ENV"        # where the stub's numpy<2 environment lives
STUB_NUMPY = "numpy>=1.21,<2"
MARKER = "harness-triton-stub.json"


def stub_env_dir() -> Path:
    """Where the stub environment lives: $HARNESS_TRITON_STUB_ENV, else inside this environment."""
    return Path(os.environ.get(STUB_ENV_VAR) or Path(sys.prefix) / "triton-stub").resolve()


def stub_env_needed() -> bool:
    return int(np.__version__.split(".")[0]) >= 2


def stub_env_problem(env: Path) -> str | None:
    """Why `env` cannot host the stub (None: it can)."""
    marker = env / MARKER
    if not marker.is_file():
        return f"there is no stub environment at {env}"
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        info = {}
    if info.get("python") != platform.python_version():
        return f"the stub environment at {env} was made for another interpreter"
    return None


def stub_python_dir() -> Path:
    """The bin/ directory whose python3 the stub takes its prefix from: the side environment's, or this one's."""
    if stub_env_needed():
        env = stub_env_dir()
        problem = stub_env_problem(env)
        if problem:
            raise HarnessError(f"tritonserver's Python backend stub cannot hand numpy {np.__version__} arrays to "
                               f"Triton (its pybind11 predates numpy 2) and {problem}; make its numpy<2 "
                               "environment once: python -m harness.live.triton setup")
        return env / "bin"
    return Path(sys.executable).parent


def setup_stub_env(pip_args: list[str] = (), env: Path | None = None) -> Path:
    """Create (or remake) the stub's numpy<2 environment; returns its path. Idempotent when valid."""
    env = env or stub_env_dir()
    if stub_env_problem(env) is None:
        return env
    if env.exists() and not env.is_dir():
        raise HarnessError(f"{env} is a file, not a directory for the Triton stub environment; set {STUB_ENV_VAR} "
                           "to a directory")
    if env.exists() and any(env.iterdir()) and not (env / "pyvenv.cfg").exists():
        raise HarnessError(f"{env} exists and is not a Triton stub environment; set {STUB_ENV_VAR} to another "
                           "directory")
    shutil.rmtree(env, ignore_errors=True)
    try:
        venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(env)
    except OSError as exc:
        raise HarnessError(f"cannot create the Triton stub environment at {env} ({exc}); "
                           f"set {STUB_ENV_VAR} to a writable directory") from None
    site_dir = Path(sysconfig.get_path("purelib", scheme="venv", vars={"base": str(env), "platbase": str(env)}))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--upgrade", "--target", str(site_dir), STUB_NUMPY, *pip_args]
    done = subprocess.run(pip, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(env, ignore_errors=True)
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise HarnessError(f"pip could not install {STUB_NUMPY!r} for the Triton stub ({tail}); where no package "
                           "index is reachable, pass a wheel directory: python -m harness.live.triton setup "
                           "--no-index --find-links <dir with a numpy 1.x wheel>")
    probe = subprocess.run([str(env / "bin" / "python3"), "-c", "import numpy; print(numpy.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or not probe.stdout.startswith("1."):
        shutil.rmtree(env, ignore_errors=True)
        raise HarnessError(f"the Triton stub environment does not import numpy<2 "
                           f"({(probe.stderr or probe.stdout).strip()[-200:]})")
    (env / MARKER).write_text(json.dumps({"python": platform.python_version(), "numpy": probe.stdout.strip()},
                                         indent=2) + "\n")
    return env
