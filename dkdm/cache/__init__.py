"""The synthetic-data cache (format 2): manifest, shard backends, reader, verify and seal."""

from .manifest import FORMAT, MANIFEST, read_manifest, seal  # noqa: F401
from .store import Store  # noqa: F401
