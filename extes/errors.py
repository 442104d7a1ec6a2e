"""Error types shared by every layer.

`CLIError` is a user-facing error: the `extes` command prints it without a traceback and exits with
status 2. It lives here, at the bottom, so library layers can raise it without importing the command.
"""

from __future__ import annotations


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""
