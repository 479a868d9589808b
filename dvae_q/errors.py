"""Typed errors of the library. The library raises, never prints or exits; `dvae_q.cli.main.main`
maps `BadInput` (and the samplers'/topologies' own input errors) to one stderr line and exit 2,
and `RunFailure` to exit 1 plus where the last good checkpoint is."""


class DvaeqError(Exception):
    """Base class of dvae-q's own errors."""

    exit_code = 1


class BadInput(DvaeqError, ValueError):
    """A config, CLI flag, data file, topology or token the user must fix (exit status 2)."""

    exit_code = 2


class RunFailure(DvaeqError, RuntimeError):
    """Training or evaluation failed at run time (exit status 1)."""

    exit_code = 1
