"""The wheel bundle for a GPU server that reaches no package registry.

    python -m harness.gpu.bundle --out wheels                       # what the harness needs beyond the host's
    python -m harness.gpu.bundle --out wheels --triton --perf-analyzer
    python -m harness.gpu.bundle --out wheels --have host-freeze.txt   # `pip freeze` of the GPU host

Every package the harness needs, with the exact versions installed here
(the ones its tests ran with), as wheels for the server's Python (3.12 by
default) on x86-64 Linux: each manylinux tag pip must be told by name, so
all of them from manylinux1 to manylinux_2_39 are offered. Packages the
host already has are left out: those of `--have` (a `pip freeze` of the
host), else those a CUDA PyTorch image ships (torch, numpy, pandas,
pyarrow, aiohttp, ...). antlr4 4.9.3 (Hydra's parser runtime) ships no
wheel and is built here. `--triton` adds nvidia-pytriton 0.5.7 (the
bundled tritonserver; its wheels are tagged manylinux_2_35) and, in
stub/, the numpy<2 its Python backend stub needs (never install that one
beside numpy 2: `python -m harness.live.triton setup --no-index
--find-links wheels/stub` puts it in its own environment);
`--perf-analyzer` adds Triton's load generator (it needs glibc 2.38).
It ends by printing the bundle's size. On the server:

    python3 -m pip install --no-index --no-deps wheels/*.whl && python3 -m pip install --no-deps -e .
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

from harness.errors import ArgumentParser, HarnessError, exit_with

PROJECT = "dnn-serving-harness"
TAGS = [f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
# What a CUDA PyTorch image for serving ships already (the GPU hosts' image holds all of these).
ON_GPU_IMAGES = {"torch", "torchvision", "numpy", "pandas", "pyarrow", "seaborn", "matplotlib", "aiohttp",
                 "aiosignal", "frozenlist", "multidict", "yarl", "propcache", "aiohappyeyeballs", "attrs",
                 "psutil", "jinja2", "markupsafe", "rich", "pygments", "markdown-it-py", "mdurl", "msgpack",
                 "pyyaml", "requests", "urllib3", "idna", "charset-normalizer", "certifi", "packaging",
                 "typing-extensions", "six", "python-dateutil", "pytz", "tzdata", "contourpy", "cycler",
                 "fonttools", "kiwisolver", "pillow", "pyparsing", "joblib", "scipy", "nvidia-ml-py", "werkzeug",
                 "click", "setuptools", "wheel", "pip", "pytest", "iniconfig", "pluggy", "filelock", "fsspec",
                 "sympy", "mpmath", "networkx", "triton", "protobuf", "grpcio", "annotated-doc", "cloudpickle",
                 "h11", "ml-dtypes", "mypy-extensions", "shellingham", "typer", "typing-inspect", "wrapt", "zipp"}
TRITON = ["nvidia-pytriton==0.5.7"]
STUB = ["numpy==1.26.4"]
PERF_ANALYZER = ["perf-analyzer"]
SOURCE_ONLY = {"antlr4-python3-runtime"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str, python: str, extras: tuple[str, ...] = ()) -> dict[str, str]:
    """name -> installed version of everything `root` needs here, for a Linux host running `python`."""
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    found: dict[str, str] = {}
    todo = [(root, set(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise HarnessError(f"{name} is needed but not installed here; install the project first: "
                               'pip install -e ".[dev]"') from None
        key = canonical(dist.metadata["Name"])
        if key in found and not wanted:
            continue
        found[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in (wanted or {""})):
                todo.append((req.name, set(req.extras)))
    found.pop(canonical(root), None)
    return found


def download(specs: list[str], out: Path, python: str, tags: list[str] = TAGS) -> None:
    if not specs:
        return
    platforms = [arg for tag in tags for arg in ("--platform", tag)]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", *platforms, "-d", str(out), *specs]
    if subprocess.run(cmd).returncode != 0:
        raise HarnessError(f"pip could not download {' '.join(specs)} for Python {python}; see pip's message above")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m harness.gpu.bundle", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("wheels"))
    ap.add_argument("--python", default="3.12", help="the GPU host's Python version (default 3.12)")
    ap.add_argument("--have", type=Path, help="`pip freeze` of the GPU host: what it has is left out")
    ap.add_argument("--triton", action="store_true", help="add nvidia-pytriton 0.5.7 and the stub's numpy<2")
    ap.add_argument("--perf-analyzer", action="store_true", help="add Triton's perf_analyzer")
    args = ap.parse_args(argv)
    try:
        if not re.fullmatch(r"3\.\d+", args.python):
            raise HarnessError(f"--python must look like 3.12 (got {args.python!r})")
        have = ON_GPU_IMAGES
        if args.have is not None:
            try:
                have = {canonical(line.split("==")[0]) for line in args.have.read_text().splitlines()
                        if line and not line.startswith("#")}
            except OSError as exc:
                raise HarnessError(f"cannot read --have {args.have}: {exc.strerror}") from None
        needed = {name: version for name, version in closure(PROJECT, args.python).items()
                  if name not in have and not name.startswith("nvidia-pytriton")}
        args.out.mkdir(parents=True, exist_ok=True)
        built = sorted(n for n in needed if n in SOURCE_ONLY)
        download([f"{n}=={v}" for n, v in sorted(needed.items()) if n not in SOURCE_ONLY], args.out, args.python)
        for name in built:                  # pure Python without a wheel on the index: build one here
            cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(args.out),
                   f"{name}=={needed[name]}"]
            if subprocess.run(cmd).returncode != 0:
                raise HarnessError(f"pip could not build a wheel of {name}")
        if args.triton:
            download(TRITON, args.out, args.python, ["manylinux_2_35_x86_64"])
            download(STUB, args.out / "stub", args.python)
        if args.perf_analyzer:
            download(PERF_ANALYZER, args.out, args.python)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = sorted(p for p in args.out.rglob("*.whl"))
    size = sum(p.stat().st_size for p in files)
    print(f"{len(files)} wheels in {args.out}, {size / 2**20:.1f} MiB: "
          + ", ".join(p.name.split("-")[0] for p in files))
    return 0


if __name__ == "__main__":
    exit_with(main)
