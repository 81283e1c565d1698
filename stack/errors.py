"""Exception root of the native stack."""


class StackError(Exception):
    """A stack component could not be installed, started, reached or stopped; the message says why."""
