"""The one exception type for problems a user can fix."""


class RecblrError(Exception):
    """Bad input (file, id, shape, checkpoint): the CLI prints it as one line and exits 2.

    The message names the input and says how to fix it.
    """
