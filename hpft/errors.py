"""`UserInputError`: bad input a user can fix (a file, a row, a setting); entry points print it without a traceback."""

from __future__ import annotations


class UserInputError(ValueError):
    """A problem in the user's data or settings. Its message names the file, the field and the fix.

    Entry points catch it, print the message alone and exit with code 2; anything else is a bug and keeps its
    traceback.
    """
