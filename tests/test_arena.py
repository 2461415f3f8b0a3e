"""Shared payload memory: what an ingress writes, another process reads in place; slots are reused."""

import subprocess
import sys

import pytest

from harness.live.arena import Arena, ArenaFull


def test_another_process_reads_what_was_written_through_the_inherited_fd():
    arena = Arena.create(slot_bytes=5000, slots=3)
    try:
        assert arena.slot_bytes % 4096 == 0 and arena.slot_bytes >= 5000
        a, b = arena.alloc(), arena.alloc()
        arena.write(a, b"x" * 5000)
        arena.write(b, bytes(range(256)) * 4)
        code = ("import sys; from harness.live.arena import Arena, gather; "
                f"arenas = [Arena.attach({arena.spec!r})]; "
                f"views = gather(arenas, [[0, {b}, 10, 20], None, [0, {a}, 4990, 10]]); "
                "sys.stdout.write(bytes(views[0]).hex() + ' ' + str(views[1]) + ' ' + bytes(views[2]).decode())")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             pass_fds=[arena.fd]).stdout
        assert out == bytes(range(10, 30)).hex() + " None " + "x" * 10
    finally:
        arena.close()


def test_slots_are_reused_last_freed_first_and_a_full_arena_says_so():
    arena = Arena.create(slot_bytes=4096, slots=2)
    try:
        a, b = arena.alloc(), arena.alloc()
        assert {a, b} == {0, 1} and arena.in_use == 2
        with pytest.raises(ArenaFull):
            arena.alloc()
        arena.free(a)
        assert arena.alloc() == a
        with pytest.raises(ValueError, match="does not fit"):
            arena.write(a, b"y" * 4097)
        with pytest.raises(ValueError, match="outside the arena"):
            arena.view(b, 4000, 200)
        with pytest.raises(ValueError, match="outside the arena"):
            arena.view(2, 0, 1)
    finally:
        arena.close()


def test_a_bad_spec_is_a_clear_error():
    with pytest.raises(ValueError, match="fd:slot_bytes:slots"):
        Arena.attach("12:abc")
