"""One base class for the errors a user can act on, and the exit codes every command uses."""
from __future__ import annotations

EXIT_OK = 0
EXIT_PARTIAL = 1  # the command ran, but some inputs failed (each is listed) or a graph was rejected
EXIT_USAGE = 2  # bad arguments or inputs, or a model that cannot be loaded: nothing was done
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), after a summary of what was done


class ToolkitError(Exception):
    """An error with a message for the user (what is wrong, where, what to do) and the exit code it maps to."""

    exit_code = EXIT_USAGE


class InputError(ToolkitError, ValueError):
    """A bad argument or input value (also a ValueError, so generic callers still catch it)."""
