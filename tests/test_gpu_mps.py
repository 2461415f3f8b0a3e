"""The private MPS daemon: always stopped, clear errors; a real one where the driver's tools and a GPU exist."""

import shutil
import subprocess
import sys
import textwrap

import pytest

from harness.errors import HarnessError
from harness.gpu import mps
from harness.gpu.mps import mps_daemon

# Stands in for nvidia-cuda-mps-control: records each call with the pipe directory it was given.
FAKE_CONTROL = textwrap.dedent("""\
    #!/bin/sh
    if [ "$1" = "-d" ]; then
        echo "start $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_RECORD"
        [ -n "$FAKE_MPS_FAIL_START" ] && exit 1
        touch "$CUDA_MPS_PIPE_DIRECTORY/control"
        exit 0
    fi
    read cmd
    echo "$cmd $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_RECORD"
    case "$cmd" in
        get_server_list) [ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ] ;;
        quit) rm -f "$CUDA_MPS_PIPE_DIRECTORY/control" ;;
    esac
    """)


@pytest.fixture
def fake_control(tmp_path, monkeypatch):
    path = tmp_path / "fake-mps-control"
    path.write_text(FAKE_CONTROL)
    path.chmod(0o755)
    record = tmp_path / "record"
    monkeypatch.setenv("FAKE_MPS_RECORD", str(record))
    return str(path), record


def calls(record):
    return [line.split()[0] for line in record.read_text().splitlines()]


def test_missing_control_binary_is_a_clear_error():
    with pytest.raises(HarnessError, match="not found on PATH.*partition=whole"):
        with mps_daemon(control="no-such-nvidia-cuda-mps-control"):
            pass


def test_daemon_is_started_with_private_directories_and_quit(fake_control):
    control, record = fake_control
    with mps_daemon(control=control) as daemon:
        assert daemon.pipe_dir.is_dir() and daemon.log_dir.is_dir()
        env = daemon.client_env(25)
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(daemon.pipe_dir)
        assert env["CUDA_MPS_LOG_DIRECTORY"] == str(daemon.log_dir)
        assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
        with pytest.raises(HarnessError):
            daemon.client_env(0)
    assert calls(record) == ["start", "get_server_list", "quit"]
    assert len({line.split()[1] for line in record.read_text().splitlines()}) == 1   # one pipe dir throughout
    assert not daemon.pipe_dir.parent.exists()                                      # cleaned up


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_daemon_is_quit_when_the_block_fails(fake_control, error):
    control, record = fake_control
    with pytest.raises(error):
        with mps_daemon(control=control):
            raise error("boom")
    assert calls(record)[-1] == "quit"


def test_failed_start_is_reported_and_still_quit(fake_control, monkeypatch):
    control, record = fake_control
    monkeypatch.setenv("FAKE_MPS_FAIL_START", "1")
    with pytest.raises(HarnessError, match="did not start"):
        with mps_daemon(control=control):
            pytest.fail("the block must not run")
    assert calls(record) == ["start", "quit"]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(shutil.which("nvidia-cuda-mps-control") is None or not _cuda_available(),
                    reason="needs a CUDA GPU and nvidia-cuda-mps-control")
def test_real_daemon_serves_a_limited_client_and_leaves_nothing_running():
    probe = "import torch; torch.ones(1, device='cuda').sum().item(); print('ok')"
    with mps_daemon() as daemon:
        out = subprocess.run([sys.executable, "-c", probe], env=daemon.client_env(25),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "ok" in out.stdout, out.stderr
        servers = daemon.command("get_server_list").stdout.split()
        assert servers, "a client ran, so an MPS server should have been started"
        pids = mps._processes_of(daemon)
        assert pids
    assert not [p for p in pids if mps._alive(p)]
    assert not mps._processes_of(daemon)


def test_profiler_runs_each_partition_in_a_child_and_always_stops_the_daemon(fake_control, tmp_path, monkeypatch):
    # Children are replaced by a script that records its partition and MPS environment and fails on mps25.
    from functools import partial

    from harness.gpu import profiler
    from harness.gpu.partitions import parse_partitions

    control, record = fake_control
    seen = tmp_path / "children"
    child = ("import os, sys; name = sys.argv[1]; open(sys.argv[2], 'a').write(' '.join([name, "
             "os.environ.get('CUDA_MPS_ACTIVE_THREAD_PERCENTAGE', '-'), "
             "str('CUDA_MPS_PIPE_DIRECTORY' in os.environ)]) + '\\n'); sys.exit(name == 'mps25')")
    monkeypatch.setattr(profiler, "_child_command",
                        lambda p, args, *_: [sys.executable, "-c", child, p.name, str(seen)])
    monkeypatch.setattr(profiler, "mps_daemon", partial(mps_daemon, control=control))
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "77")        # must not leak into `whole`
    args = profiler.parse_args(["--partition", "mps50,whole,mps25,mig-1g.10gb-emulated", "--siblings", "0"])
    failed = profiler.profile_partitions(parse_partitions(args.partition), args)
    assert failed == ["mps25"]
    assert seen.read_text().splitlines() == [           # whole first, before the daemon exists
        "whole - False", "mps50 50 True", "mps25 25 True", "mig-1g.10gb-emulated 13 True"]
    assert calls(record) == ["start", "get_server_list", "quit"]


def test_busy_siblings_run_while_a_share_is_measured_and_are_always_ended(fake_control, tmp_path, monkeypatch):
    # Siblings are replaced by processes that say they run; the measuring child counts the live ones.
    import os
    from functools import partial

    from harness.gpu import profiler
    from harness.gpu.partitions import parse_partitions

    control, _record = fake_control
    pids, seen = tmp_path / "pids", tmp_path / "seen"
    pids.mkdir()
    sibling = ("import os, sys, time, pathlib; pathlib.Path(sys.argv[2], str(os.getpid())).touch(); "
               "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)")
    child = ("import os, sys; live = 0\n"
             "for p in os.listdir(sys.argv[2]):\n"
             "    try: os.kill(int(p), 0); live += 1\n"
             "    except OSError: pass\n"
             "open(sys.argv[3], 'a').write(f'{sys.argv[1]} {sys.argv[4]} {live} {sys.argv[5]}\\n')\n"
             "sys.exit(sys.argv[1] == 'mps25' and sys.argv[4] != '0')")
    monkeypatch.setattr(profiler, "_sibling_command",
                        lambda p, args, ready, size: [sys.executable, "-c", sibling, str(ready), str(pids)])
    monkeypatch.setattr(profiler, "_child_command",
                        lambda p, args, siblings, out, alone, size, beside=None:
                        [sys.executable, "-c", child, p.name, str(pids), str(seen), str(siblings),
                         f"{size}:{','.join(map(str, beside or {}))}"])
    monkeypatch.setattr(profiler, "mps_daemon", partial(mps_daemon, control=control))
    args = profiler.parse_args(["--partition", "whole,mps50,mps25", "--sibling-batch", "16,128"])
    assert profiler.profile_partitions(parse_partitions(args.partition), args) == ["mps25"]
    # Alone on the whole GPU; a share first alone, then beside 1 busy share at 50%, 3 at 25%: at batch 128,
    # then at 16, whose measurement is handed the one at 128. Only one set of siblings runs at a time.
    assert seen.read_text().splitlines() == ["whole 0 0 16:", "mps50 0 0 16:", "mps50 1 1 128:", "mps50 1 1 16:128",
                                             "mps25 0 0 16:", "mps25 3 3 128:"]
    left = []
    for p in os.listdir(pids):
        try:
            os.kill(int(p), 0)
            left.append(p)
        except OSError:
            pass
    assert left == [], "every sibling must be ended, also after a failed child"


@pytest.mark.parametrize("bad", [["--siblings", "some"], ["--siblings", "-1"], ["--sibling-batch", "0"]])
def test_bad_sibling_options_are_one_clear_error(bad):
    from harness.gpu import profiler

    with pytest.raises(HarnessError, match="--sibling"):
        profiler.parse_args(bad)
