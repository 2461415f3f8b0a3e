"""One exception type for everything the user can fix.

Anything raised as HarnessError reaches the user as a single line
("error: <what is wrong>; <how to fix it>") and exit status 2, never as a
traceback. Raise it for bad configs, trace files, profiles and requests.
"""


class HarnessError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""
