"""The one exception type whose message is shown to a user as it is.

Raise :class:`UserError` for anything the user can fix (a bad path, a missing file, an option that
does not fit): the CLI prints its message as one line and exits non-zero, without a traceback.
"""


class UserError(Exception):
    """An error the user can act on; its message names the bad input and what to do."""


class BadImageError(UserError):
    """An image file that cannot be read or decoded (bulk commands skip and report these)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")
