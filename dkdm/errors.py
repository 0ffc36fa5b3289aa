"""The one exception type for errors a user can cause; the CLI prints it as one line."""


class DkdmError(Exception):
    """Bad input or state the user can fix; the message says how."""


class BadShardError(DkdmError):
    """One shard of a cache is damaged or forged; `--on-bad-shard skip` may drop it and go on."""


class NonFiniteError(DkdmError):
    """Training or sampling produced NaN/Inf: nothing after it is trustworthy."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run after a checkpoint; the CLI exits 128 + signal number (130, 143)."""

    def __init__(self, signum: int = 2):
        super().__init__(signum)
        self.signum = signum
