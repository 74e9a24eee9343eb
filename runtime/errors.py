"""The one exception type for problems the user can fix.

The CLI turns an ``EdgeRestoreError`` into a single line on stderr and a non-zero
exit code; anything else is a bug and keeps its traceback.
"""


class EdgeRestoreError(Exception):
    """A user-facing error: bad input, bad bundle, bad option. The message is one line."""
