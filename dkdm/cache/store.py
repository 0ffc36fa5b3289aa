"""A cache root on local disk or any fsspec URL, with atomic whole-file writes."""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from pathlib import Path

import fsspec

from ..errors import DkdmError
from ..extras import install_hint
from ..runtime import atomic_write_bytes, chmod_default

PART = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.\-]*$")


class Store:
    """Files under one root. Local writes are temp + rename; object stores get one PUT per file,
    which is atomic there (a reader sees the old object or the whole new one)."""

    def __init__(self, url: str | Path):
        self.url = str(url).rstrip("/")
        self.opened = time.time()  # this writer's start: older temp files of its shards are leftovers
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except ImportError as exc:  # fsspec's "Install s3fs to access S3" carries no module name
            protocol = self.url.split("://")[0] if "://" in self.url else ""
            raise DkdmError(install_hint("s3fs", f"cache location {self.url!r}") if protocol in ("s3", "s3a")
                            else f"cannot open cache location {self.url!r}: {exc}") from exc
        except ValueError as exc:
            raise DkdmError(f"cannot open cache location {self.url!r}: {exc}") from exc
        self.local = self.fs.protocol in ("file", "local") or "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else ())

    def path(self, rel: str) -> str:
        """rel under the root, or a one-line refusal: names come from untrusted manifests and sidecars, so
        no absolute path, no `..`, nothing but [A-Za-z0-9_.-], and locally no symlink on the way."""
        if not rel:
            return self.root
        parts = rel.split("/")
        if any(p in (".", "..") or not PART.match(p) for p in parts):
            raise DkdmError(f"refusing path {rel!r} in cache {self.url}: names must stay inside the cache")
        full = f"{self.root}/{rel}"
        if self.local:
            cur = self.root
            for p in parts:
                cur = f"{cur}/{p}"
                if os.path.islink(cur):
                    raise DkdmError(f"refusing {rel!r} in cache {self.url}: {cur} is a symlink (caches hold plain files)")
        return full

    def full_url(self, rel: str) -> str:
        """A URL another process (a webdataset worker) can open."""
        if self.local:
            return str(Path(self.path(rel)))
        return self.fs.unstrip_protocol(self.path(rel))

    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self.path(rel))

    def is_dir(self, rel: str = "") -> bool:
        return self.fs.isdir(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def ls(self, rel: str = "") -> list[str]:
        """Names (not paths) directly under rel; empty if it does not exist."""
        p = self.path(rel)
        if not self.fs.exists(p):
            return []
        return sorted(os.path.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False))

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.local:
            atomic_write_bytes(self.path(rel), data)
        else:
            self.fs.pipe_file(self.path(rel), data)

    def put_file(self, local_path: str | Path, rel: str) -> None:
        """Move a finished local temp file into place (rename locally, single upload remotely)."""
        if self.local:
            dest = Path(self.path(rel))
            dest.parent.mkdir(parents=True, exist_ok=True)
            chmod_default(local_path)  # mkstemp made it 0600: a teammate must be able to read a shared cache
            os.replace(local_path, dest)
        else:
            self.fs.put_file(str(local_path), self.path(rel))
            Path(local_path).unlink(missing_ok=True)

    def temp_file(self, rel_dir: str, suffix: str, owner: str = "") -> str:
        """A temp file on the same filesystem as the destination when local (so rename is atomic).
        `owner` (a shard name), host and pid go into the name, so a writer can remove the leftovers of a crashed
        run, and never the live temp file of another writer of the same shard (see `is_stale`)."""
        if self.local:
            d = Path(self.path(rel_dir))
            d.mkdir(parents=True, exist_ok=True)
            for stale in d.glob(f".tmp-{owner}-*") if owner else ():
                if is_stale(stale, owner, self.opened):
                    stale.unlink(missing_ok=True)
            tag = f"{owner}-{_HOST}-{os.getpid()}-" if owner else ""
            fd, name = tempfile.mkstemp(dir=d, prefix=f".tmp-{tag}", suffix=suffix)
        else:
            fd, name = tempfile.mkstemp(prefix="dkdm-", suffix=suffix)
        os.close(fd)
        return name

    def open(self, rel: str, mode: str = "rb"):
        return self.fs.open(self.path(rel), mode)

    def remove(self, rel: str) -> None:
        if self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel))


_HOST = socket.gethostname().replace("-", "_") or "host"


def is_stale(path: Path, owner: str, since: float) -> bool:
    """A leftover temp file of `owner`: on this host, one whose writer process is gone; from another host (or
    an older dkdm, no pid in the name), one last written before this writer started (`since`). A live writer's file (another
    rank or host filling the same shard) is left alone."""
    parts = path.name[len(f".tmp-{owner}-"):].split("-")
    if len(parts) >= 3 and parts[0] == _HOST and parts[1].isdigit():
        return not _alive(int(parts[1]))
    try:
        return path.stat().st_mtime < since
    except FileNotFoundError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
