"""The one exception type for mistakes a user can fix (a bad option, a missing or refused file).

The CLI prints a :class:`UserError` as one line naming what is wrong and how to fix it (the traceback
only with ``-v``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, files or options; the message is the whole report (one line)."""
