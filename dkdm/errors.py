"""The one exception type for errors a user can cause; the CLI prints it as one line."""


class DkdmError(Exception):
    """Bad input or state the user can fix; the message says how."""
