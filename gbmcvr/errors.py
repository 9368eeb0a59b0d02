"""The one exception type for mistakes a user can fix; the CLI turns it into exit code 2 and one line."""


class UserError(Exception):
    """A problem with the user's input (paths, data, config) rather than a bug in gbmcvr."""

    exit_code = 2
