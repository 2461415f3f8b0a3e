"""One exception type for everything the user can fix.

Anything raised as HarnessError reaches the user as a single line
("error: <what is wrong>; <how to fix it>") and exit status 2, never as a
traceback. Raise it for bad configs, trace files, profiles and requests.
"""

import argparse
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
