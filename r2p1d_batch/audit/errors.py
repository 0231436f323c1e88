"""The audit's user-facing error: something the person running it must fix (exit code 2)."""


from ..errors import UserError


class AuditError(UserError, RuntimeError):
    """Nothing to audit, a bad selection, weights that changed, unreadable replay files..."""
