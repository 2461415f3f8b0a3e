"""`python -m harness list` and `--help`: every choice of every group, each with its one-line description."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness import catalog

ROOT = Path(__file__).resolve().parent.parent


def harness(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_list_names_every_choice_with_its_description():
    done = harness("list")
    assert done.returncode == 0, done.stderr
    sections = {block.split()[0]: block.splitlines()[1:] for block in done.stdout.strip().split("\n\n")}
    assert list(sections) == list(catalog.GROUPS)
    for group, lines in sections.items():
        for name in catalog.choices(group):
            line = next((ln for ln in lines if ln.split()[:1] == [name]), None)
            assert line is not None, f"{group} {name} not listed"
            assert catalog.description(group, name) in line
    assert "schema" not in done.stdout


def test_descriptions_come_from_docstrings_comments_or_the_slots():
    assert catalog.description("system", "eager") == \
        "Eager dispatch: whenever a slot is idle and a queue is non-empty, send at once"
    assert catalog.description("workload", "bursty") == "Gamma gaps with coefficient of variation 4 (Poisson is 1)"
    assert catalog.description("cluster", "h100x1") == "1 x H100"            # no comment: its slots in words
    assert catalog.description("experiment", "goodput_vs_rate").startswith("Goodput vs offered load")
    # A comment sentence that runs over two lines is one description.
    assert catalog.description("workload", "maf_trace").endswith("one trace minute per second")
    assert all(catalog.description(g, n) for g in catalog.GROUPS for n in catalog.choices(g))


def test_one_group_and_an_unknown_one():
    done = harness("list", "runtime")
    assert done.returncode == 0 and "sim" in done.stdout and "symphony" not in done.stdout
    done = harness("list", "gpus")
    assert done.returncode == 2 and done.stderr.startswith("error: unknown group 'gpus'")
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_shows_the_groups_and_points_to_list(flag):
    done = harness(flag)
    assert done.returncode == 0
    assert "python -m harness list" in done.stdout and "-m GROUP=A,B" in done.stdout
    for group in catalog.GROUPS:
        assert f"\n  {group} " in done.stdout
    assert "schema" not in done.stdout and "powered by Hydra" not in done.stdout
