"""The base of fpol's own errors, and the exit codes they map to.

Every error fpol raises for a user to read derives from FpolError: its message is one line
(what is wrong and what to do), and it carries the exit code the command line gives for it,
so `fpol` handles them all in one place (fpol/cli.py `main`). A module names its errors
after what went wrong; the code says which kind of problem it is:

    0 ok, 1 the policy or its expectations (errors, a failed case, a verifier rejection, a
    refused load), 2 usage (bad arguments or input files), 3 environment (a kernel feature,
    tool or library this machine lacks).
"""

from __future__ import annotations

from typing import Optional

EXIT_OK, EXIT_POLICY, EXIT_USAGE, EXIT_ENV = 0, 1, 2, 3


class FpolError(Exception):
    exit_code = EXIT_POLICY

    def __init__(self, *args, exit_code: Optional[int] = None):
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageProblem(FpolError):
    exit_code = EXIT_USAGE


class EnvironmentProblem(FpolError):
    exit_code = EXIT_ENV
