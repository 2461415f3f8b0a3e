"""One exception type for everything the user can fix.

Anything raised as HarnessError reaches the user as a single line
("error: <what is wrong>; <how to fix it>") and exit status 2, never as a
traceback. Raise it for bad configs, trace files, profiles and requests.
"""

import argparse
import os
import sys
from typing import NoReturn


class HarnessError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the command-line tools: a bad flag is one line (`error: <what>; see --help`) and exit 2,
    as every other mistake the user can fix, instead of the usage block and argparse's own wording."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message.removeprefix('argument ')}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def say(text: str) -> None:
    """Print `text` to stdout; where its reader went away (`| head`), drop the rest of the output quietly: the
    run's results and exit status do not depend on who reads what it prints."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        stdout_gone()


def stdout_gone() -> None:
    """Point stdout at /dev/null, so neither later prints nor the flush at exit raise a broken pipe."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


PIPE_CLOSED = 141            # the status a process ended by SIGPIPE gets from the shell: `set -o pipefail` sees it


def exit_with(main) -> NoReturn:
    """sys.exit(main()); where the reader of stdout went away (`| head`), quietly with PIPE_CLOSED instead
    of a traceback (what main had not finished is not claimed done)."""
    try:
        code = main()
    except BrokenPipeError:
        stdout_gone()
        code = PIPE_CLOSED
    sys.exit(code)
