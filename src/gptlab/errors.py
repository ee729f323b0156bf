"""The one exception type for mistakes a user can fix (bad path, corrupt file, wrong shape).

The CLI turns a GptlabError into a single line on stderr and a non-zero exit; anything else is a
bug and keeps its traceback. Config validation uses plain ValueError (see config.py).
"""


class GptlabError(Exception):
    """A user-fixable problem; the message says what went wrong, why, and how to fix it."""
