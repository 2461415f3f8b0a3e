"""The scheduler's core (harness.live.cores): the setting, the measurement, pinning and keeping others off."""

import json
import os
import subprocess
import sys
import time

import pytest

from harness.errors import HarnessError
from harness.live import cores


def test_the_setting_is_auto_none_or_a_core_number():
    assert cores.parse("auto") == "auto" and cores.parse(" None ") == "none" and cores.parse(3) == 3
    for bad in ("fast", "-1", "1.5", ""):
        with pytest.raises(HarnessError, match="runtime.scheduler_cpu must be auto, none or a core number"):
            cores.parse(bad)


def test_choose_pins_nothing_when_told_or_on_a_small_host_and_refuses_a_core_it_may_not_use():
    assert cores.choose("none") == (None, {})
    usable = cores.usable()
    if len(usable) < cores.MIN_CORES:
        assert cores.choose("auto") == (None, {})       # this host: too few cores to give one away
    else:
        core, measured = cores.choose("auto")
        assert set(measured) == usable and measured[core] == min(measured.values())
    assert cores.choose(min(usable)) == (min(usable), {})
    with pytest.raises(HarnessError, match=f"runtime.scheduler_cpu={max(usable) + 1} is not a core"):
        cores.choose(max(usable) + 1)


def test_each_core_is_measured_where_it_is_and_the_process_runs_where_it_did():
    before = cores.usable()
    measured = cores.speeds(repeats=1, n=2_000)
    assert set(measured) == before and all(ms > 0 for ms in measured.values())
    assert cores.usable() == before
    # More work takes longer on the same core: the number measures the work, not a constant.
    core = min(before)
    assert cores.speeds([core], repeats=1, n=200_000)[core] > cores.speeds([core], repeats=1, n=2_000)[core]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores: one for the pinned process")
def test_a_pinned_loop_keeps_the_processes_and_solver_threads_it_starts_off_its_core():
    core = min(os.sched_getaffinity(0))
    code = ("import json, os, subprocess, sys; from harness.live import cores; "
            f"cores.pin({core}); child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
            "cores.keep_off(child.pid); "
            "thread = cores.executor().submit(lambda: sorted(os.sched_getaffinity(0))).result(); "
            "print(json.dumps([sorted(os.sched_getaffinity(0)), sorted(os.sched_getaffinity(child.pid)), thread])); "
            "child.kill()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    mine, childs, thread = json.loads(out.stdout)
    others = os.sched_getaffinity(0) - {core}
    assert mine == [core] and set(childs) == others and set(thread) == others


def test_keep_off_moves_a_process_off_the_given_cores_and_ignores_one_that_is_gone():
    usable = cores.usable()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        if len(usable) >= 2:
            cores.keep_off(child.pid, [min(usable)])
            assert os.sched_getaffinity(child.pid) == usable - {min(usable)}
        before = os.sched_getaffinity(child.pid)
        cores.keep_off(child.pid, usable)                    # every core: nothing left to move it to, kept
        assert os.sched_getaffinity(child.pid) == before
    finally:
        child.kill()
        child.wait()
    time.sleep(0.05)
    cores.keep_off(child.pid, [min(usable)])                 # reaped: no error


def test_a_range_of_cores_reads_as_the_affinity_tools_write_it():
    assert cores._ranges({0, 1, 2, 3, 6}) == "0-3,6" and cores._ranges({5}) == "5" and cores._ranges(set()) == ""
