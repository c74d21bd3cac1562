"""The errors a user can act on, sorted by what they mean, and the exit status each maps to.

Five kinds under one base, each with its exit status (``contract.cli.run_main`` prints ``error: message`` and
returns it):

- ``InputError`` (2): a bad argument, input file or option value; nothing was done.
- ``BadArtifactError`` (2): a model artifact that is corrupt, stale (built for another version, device or
  checkpoint) or lacks the metadata that says what it is; rebuild it.
- ``MissingDependency`` (2): an optional package or tool this use needs is not installed; the message says how.
- ``NotFaithfulError`` (1): the artifact was made but fails the fidelity bar, so it is not written (or is rejected).
- ``BackendError`` (1): a backend, compiler or server failed while doing the work.

Ctrl-C is ``EXIT_INTERRUPTED`` (130). The classes elsewhere in the project are subclasses (or names) of these.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_PARTIAL = 1  # the command ran, but some inputs failed (each is listed) or a graph was rejected
EXIT_FAILED = EXIT_PARTIAL  # a backend or server failed, or the result is not faithful
EXIT_USAGE = 2  # bad arguments or inputs, or a model that cannot be loaded: nothing was done
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), after a summary of what was done
# export.tensorrt's documented status for "no TensorRT or no GPU here" (a MissingDependency): scripts test for it.
EXIT_NO_TENSORRT = 3


class ToolkitError(Exception):
    """An error with a message for the user (what is wrong, where, what to do) and the exit code it maps to."""

    exit_code = EXIT_USAGE

    def also(self, note: str) -> "ToolkitError":
        """Append what the command adds (e.g. "nothing was written to X") to the message; returns the error, to be
        raised again."""
        self.args = (f"{self}; {note}",)
        return self


class InputError(ToolkitError, ValueError):
    """A bad argument or input value (also a ValueError, so generic callers still catch it)."""


class BadArtifactError(ToolkitError):
    """A model artifact (graph, engine, package, IR, cache) that is corrupt, stale or unlabelled: rebuild it."""


class MissingDependency(ToolkitError, ImportError):
    """An optional package that this use needs is not installed; the message says how to install it."""


class NotFaithfulError(ToolkitError):
    """A result below the fidelity bar: nothing is written (exit 1)."""

    exit_code = EXIT_FAILED


class BackendError(ToolkitError, RuntimeError):
    """A backend, compiler or server that cannot load or run, with the reason and what to do (exit 1 where it
    ends a command; a batch lists it per image)."""

    exit_code = EXIT_FAILED
