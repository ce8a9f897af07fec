"""The one exception type whose message is shown to a user as it is.

Raise :class:`UserError` for anything the user can fix (a bad path, a missing file, an option that
does not fit): the CLI prints its message as one line and exits non-zero, without a traceback.
"""

from typing import Optional


class UserError(Exception):
    """An error the user can act on; its message names the bad input and what to do.

    ``option``: the parameter the problem is about (``"classes"``, ``"weights"``), so a front end can point at
    the flag or field the user set; the message itself never names a CLI flag.
    """

    def __init__(self, message: str = "", option: Optional[str] = None):
        super().__init__(message)
        self.option = option


class BadImageError(UserError):
    """An image file that cannot be read or decoded (bulk commands skip and report these)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")
