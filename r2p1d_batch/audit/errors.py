"""The audit's user-facing error: something the person running it must fix (exit code 2)."""


class AuditError(RuntimeError):
    """Nothing to audit, a bad selection, weights that changed, unreadable replay files..."""
