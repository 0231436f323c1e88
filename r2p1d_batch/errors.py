"""The one user-facing error type: a failure the person running a command must act on.

Every command prints such an error as ``error: MESSAGE`` (no traceback) and exits with its
``exit_code``: 2 for bad input or config (the user fixes it), 3 for an outside service that
failed (retry later). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input, config, weights or a busy output: exit 2."""

    exit_code = 2


class ServiceError(UserError):
    """An outside service (AI Hub, object store) failed: exit 3."""

    exit_code = 3
