"""The one exception type that reaches users as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input: a config typo, missing data, a shape that does not fit the mesh.

    The message names the problem and the fix; the CLI prints it as one line and exits 2.
    """
