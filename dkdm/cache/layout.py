"""The cache's names: format id, manifest file, shard folder. A leaf module: the manifest and every backend
import these names from here, never from each other."""

from __future__ import annotations

FORMAT = "dkdm-cache/2"  # v2: tar samples hold record blocks (v1: one record per sample)
MANIFEST = "manifest.json"
SHARD_DIR = "shards"


def data_present(store, shard: dict) -> bool:
    """The data files a sidecar or manifest entry names all exist (a sidecar alone proves nothing)."""
    if "files" in shard:
        return all(store.exists(rel) for rel in shard["files"])
    return store.exists(f"{SHARD_DIR}/{shard['file']}")
