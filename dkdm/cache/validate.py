"""The one validation layer every cache read goes through: manifest and sidecar fields typed and bounded,
shard entries consistent with the layout, record blocks checked against the manifest (shape, dtype,
finiteness, timestep on the schedule, trajectory and step inside the shard, no duplicate, cond row in range).
A cache is untrusted input; everything here runs before anything sized by the cache is allocated."""

from __future__ import annotations

import json
import math
import re

import numpy as np

from ..errors import BadShardError, DkdmError
from .limits import check, limit

HEX64 = re.compile(r"^[0-9a-f]{64}$")
SHARD_NAME = re.compile(r"^traj-\d{6,}$")
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler")
STORAGE_NP = {"float16": "float16", "bfloat16": "uint16", "float32": "float32"}


def _fail(where: str, msg: str, exc=DkdmError):
    raise exc(f"{where}: {msg}")


def read_json(store, rel: str, what: str | None = None):
    """A JSON file of the cache, its size bounded before it is read; one-line error naming it otherwise."""
    where = f"{store.url}/{rel}"
    try:
        size = store.size(rel)
    except FileNotFoundError:
        raise DkdmError(f"{where} is missing") from None
    check("json_bytes", size, f"{where} size")
    try:
        return json.loads(store.read_bytes(rel))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DkdmError(f"{where} is not valid JSON ({exc})") from None


def _int(v, where, what, lo=0, hi=None):
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(where, f"{what} must be an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        _fail(where, f"{what} = {v} outside [{lo}, {hi if hi is not None else '∞'}]")
    return v


def _num(v, where, what, lo=None):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (lo is not None and v < lo):
        _fail(where, f"{what} must be a finite number{f' >= {lo}' if lo is not None else ''}, got {v!r}")
    return v


def _dict(v, where, what, keys=()):
    if not isinstance(v, dict):
        _fail(where, f"{what} must be an object, got {type(v).__name__}")
    missing = [k for k in keys if k not in v]
    if missing:
        _fail(where, f"{what} lacks {missing} (written by another tool, or damaged)")
    return v


def _ints(v, where, what, lo=0, hi=None, max_len=None):
    if not isinstance(v, list) or (max_len is not None and len(v) > max_len):
        _fail(where, f"{what} must be a list of at most {max_len} integers")
    return [_int(x, where, f"{what}[{i}]", lo, hi) for i, x in enumerate(v)]


def _shape(v, where, what):
    dims = _ints(v, where, what, lo=1, hi=1 << 20, max_len=limit("record_dims"))
    if len(dims) != limit("record_dims"):
        _fail(where, f"{what} {v} must have {limit('record_dims')} dims (C, H, W)")
    check("record_elements", math.prod(dims), f"{where}: {what} elements")
    return dims


def records_per_step(manifest: dict) -> int:
    """2 for latent caches with paired guidance records (one for the prompt's row, one for the "" row), else 1."""
    return 2 if str(manifest["record"].get("target_kind", "")).startswith("eps, unguided: per step one record") else 1


def legal_steps(manifest: dict) -> set[int]:
    """The timesteps a record of this cache may carry: the manifest's `covered_timesteps` when the cache
    covers shifted grids, else the sampler's own schedule."""
    covered = covered_of(manifest)
    return set(covered if covered is not None else manifest["sampler"]["timesteps"])


def covered_of(m: dict):
    """`covered_timesteps`: dkdm generate writes it in the sampler section (issue 9); top level also read."""
    sp = m.get("sampler")
    return m.get("covered_timesteps", sp.get("covered_timesteps") if isinstance(sp, dict) else None)


def check_manifest(m: dict, where: str) -> dict:
    """Every field a reader or trainer uses, typed and bounded; returns m."""
    _dict(m, where, "manifest", ("cache_id", "teacher", "scheduler", "sampler", "record", "layout"))
    if not isinstance(m["cache_id"], str) or not re.fullmatch(r"[0-9a-f]{8,64}", m["cache_id"]):
        _fail(where, f"cache_id {m['cache_id']!r} is not a hex id")
    t = _dict(m["teacher"], where, "teacher", ("source", "class", "fingerprint", "config"))
    if t["class"] not in UNET_CLASSES:
        _fail(where, f"teacher class {t['class']!r} is not one of {UNET_CLASSES}")
    if not isinstance(t["fingerprint"], str) or not HEX64.match(t["fingerprint"]):
        _fail(where, "teacher fingerprint is not a sha256")
    if t.get("vae") is not None:
        vae = _dict(t["vae"], where, "teacher vae", ("fingerprint", "scaling_factor"))
        if not isinstance(vae["fingerprint"], str) or not HEX64.match(vae["fingerprint"]):
            _fail(where, "teacher vae fingerprint is not a sha256")
        _num(vae["scaling_factor"], where, "teacher vae scaling_factor")
    s = _dict(m["scheduler"], where, "scheduler", ("class", "config"))
    if s["class"] not in SCHEDULER_CLASSES:
        _fail(where, f"scheduler class {s['class']!r} is not one of {SCHEDULER_CLASSES}")
    n_train = _int(_dict(s["config"], where, "scheduler config", ("num_train_timesteps",))["num_train_timesteps"],
                   where, "num_train_timesteps", 1, 100_000)
    sp = _dict(m["sampler"], where, "sampler", ("steps", "timesteps", "dtype"))
    steps = _int(sp["steps"], where, "sampler steps", 1, limit("steps"))
    _ints(sp["timesteps"], where, "sampler timesteps", 0, n_train - 1, max_len=limit("steps"))
    if "kept_steps" in sp:
        _ints(sp["kept_steps"], where, "sampler kept_steps", 0, max(steps, len(sp["timesteps"])) - 1, max_len=limit("steps"))
    if covered_of(m) is not None:
        _ints(covered_of(m), where, "covered_timesteps", 0, n_train - 1, max_len=n_train)
    if "eta" in sp:
        _num(sp["eta"], where, "sampler eta", 0)
    if "guidance_scale" in sp:
        _num(sp["guidance_scale"], where, "guidance_scale", 1)
    r = _dict(m["record"], where, "record", ("x_t", "target"))
    for k in ("x_t", "target"):
        _dict(r[k], where, f"record.{k}", ("shape", "dtype"))
        _shape(r[k]["shape"], where, f"record.{k}.shape")
        if r[k]["dtype"] not in STORAGE_NP:
            _fail(where, f"record.{k}.dtype {r[k]['dtype']!r} is not one of {sorted(STORAGE_NP)}")
    xs, ts = r["x_t"]["shape"], r["target"]["shape"]
    if r["target"]["dtype"] != r["x_t"]["dtype"] or ts[1:] != xs[1:] or ts[0] not in (xs[0], 2 * xs[0]):
        _fail(where, f"record.target {ts} {r['target']['dtype']} does not fit record.x_t {xs} {r['x_t']['dtype']}")
    _check_teacher_config(t["config"], xs, ts, where)
    lay = _dict(m["layout"], where, "layout", ("backend", "shard_size"))
    if lay["backend"] not in ("wds", "zarr") or lay.get("compression") not in (None, "gzip"):
        _fail(where, f"layout backend {lay['backend']!r} / compression {lay.get('compression')!r} unknown")
    _int(lay["shard_size"], where, "layout shard_size", 1, limit("shard_records"))
    if lay["backend"] == "zarr":
        _dict(lay, where, "layout", ("records_per_shard", "records_total"))
        per = _int(lay["records_per_shard"], where, "records_per_shard", 1, limit("shard_records"))
        total = _int(lay["records_total"], where, "records_total", 1, limit("records"))
        if per != lay["shard_size"] * len(sp.get("kept_steps") or sp["timesteps"]) * records_per_step(m) \
                or total > per * limit("shards"):
            _fail(where, f"records_per_shard {per} does not match shard_size x kept steps")
    shards = m.get("shards", [])
    if not isinstance(shards, list):
        _fail(where, "shards must be a list")
    check("shards", len(shards), f"{where}: shards")
    for e in shards:
        check_shard_entry(e, m, where)
    _no_overlap(shards, where)
    tot = _dict(m.get("totals", {}), where, "totals")
    for t in _dict(tot.get("t_hist", {}), where, "totals.t_hist"):
        if not re.fullmatch(r"\d{1,6}", str(t)):
            _fail(where, f"totals.t_hist key {t!r} is not a timestep")
    for k in ("shards", "records", "bytes", "trajectories"):
        if k in tot:
            _int(tot[k], where, f"totals.{k}", 0)
    if m.get("embeddings") is not None:
        emb = _dict(m["embeddings"], where, "embeddings", ("path", "rows", "seq", "dim", "sha256"))
        if emb["path"] != "embeddings.zarr":
            _fail(where, f"embeddings path {emb['path']!r} must be 'embeddings.zarr'")
        _int(emb["rows"], where, "embeddings rows", 1, limit("embedding_rows"))
        _int(emb["seq"], where, "embeddings seq", 1, 1 << 16)
        _int(emb["dim"], where, "embeddings dim", 1, 1 << 16)
        check("record_elements", emb["seq"] * emb["dim"], f"{where}: embedding elements")
    return m


def _check_teacher_config(cfg: dict, xs: list, ts: list, where: str) -> None:
    """The student is built from this config: it must describe the records' geometry, nothing bigger."""
    _dict(cfg, where, "teacher config", ("in_channels", "out_channels", "sample_size"))
    size = cfg["sample_size"]
    sizes = size if isinstance(size, list) else [size, size]
    if _int(cfg["in_channels"], where, "teacher in_channels", 1) != xs[0] or \
            _int(cfg["out_channels"], where, "teacher out_channels", 1) != ts[0] or \
            [_int(v, where, "teacher sample_size", 1) for v in sizes[:2]] != xs[1:]:
        _fail(where, f"teacher config (in {cfg['in_channels']}, out {cfg['out_channels']}, size {size}) does not match "
                     f"the record shapes x_t {xs}, target {ts}")
    cross = cfg.get("cross_attention_dim")
    if cross is not None:
        for v in cross if isinstance(cross, list) else [cross]:
            _int(v, where, "teacher cross_attention_dim", 1, 1 << 16)


def expected_records(entry: dict, m: dict) -> int:
    a, b = entry["trajectories"]
    return (b - a) * len(m["sampler"].get("kept_steps") or m["sampler"]["timesteps"]) * records_per_step(m)


def check_shard_entry(e: dict, m: dict, where: str) -> dict:
    """A manifest shard entry or sidecar: names from its index, trajectories and rows from the layout."""
    _dict(e, where, "shard entry", ("index", "name", "file", "records", "bytes", "sha256", "trajectories"))
    g = _int(e["index"], where, "shard index", 0, limit("shards"))
    here = f"{where}: shard {g}"
    lay = m["layout"]
    if e["name"] != f"traj-{g:06d}":
        _fail(here, f"name {e['name']!r} is not traj-{g:06d}", BadShardError)
    suffix = "" if lay["backend"] == "zarr" else ".tar.gz" if lay.get("compression") == "gzip" else ".tar"
    if e["file"] != e["name"] + suffix:
        _fail(here, f"file {e['file']!r} is not {e['name'] + suffix!r} (names are fixed by the index)", BadShardError)
    k = lay["shard_size"]
    tr = _ints(e["trajectories"], here, "trajectories", 0, max_len=2)
    if len(tr) != 2 or tr[0] != g * k or not tr[0] < tr[1] <= tr[0] + k:
        _fail(here, f"trajectories {e['trajectories']} are not within [{g * k}, {(g + 1) * k})", BadShardError)
    n = _int(e["records"], here, "records", 0, limit("shard_records"))
    if n != expected_records(e, m):
        _fail(here, f"{n} records, but {tr[1] - tr[0]} trajectories x {len(m['sampler'].get('kept_steps') or m['sampler']['timesteps'])} "
                    f"kept steps{' x 2 (paired guidance)' if records_per_step(m) == 2 else ''} make {expected_records(e, m)}",
              BadShardError)
    _int(e["bytes"], here, "bytes", 0, limit("shard_bytes"))
    r = m["record"]
    decoded = n * np.dtype(STORAGE_NP[r["x_t"]["dtype"]]).itemsize * (math.prod(r["x_t"]["shape"]) + math.prod(r["target"]["shape"]))
    check("shard_bytes", decoded, f"{here}: decoded size in bytes")  # what reading the shard allocates
    hist = _dict(e.get("t_hist", {}), here, "t_hist")
    for t, c in hist.items():
        if not re.fullmatch(r"\d{1,6}", str(t)):
            _fail(here, f"t_hist key {t!r} is not a timestep", BadShardError)
        _int(c, here, f"t_hist[{t}]", 0, n)
    if not isinstance(e["sha256"], str) or not HEX64.match(e["sha256"]):
        _fail(here, "sha256 is not a hex digest", BadShardError)
    if lay["backend"] == "zarr":
        from .zarr_backend import expected_files

        per = lay["records_per_shard"]
        if e.get("rows") != [g * per, g * per + n]:
            _fail(here, f"rows {e.get('rows')} are not [{g * per}, {g * per + n}) (overlapping or shifted rows)", BadShardError)
        files = _dict(e.get("files"), here, "files")
        want = expected_files(g, m["record"])
        if not any(p.endswith("zarr.json") for p in files):
            _fail(here, "lists no sha256 of the zarr metadata (a dkdm < 0.3 sidecar, or a forged entry); regenerate the "
                        "cache with `dkdm generate`, re-sealing cannot add it", BadShardError)
        if sorted(files) != sorted(want):
            _fail(here, f"files {sorted(files)} are not the shard's files {sorted(want)}", BadShardError)
        for p, f in files.items():
            _dict(f, here, p, ("bytes", "sha256"))
            _int(f["bytes"], here, f"{p} bytes", 0, limit("shard_bytes"))
    return e


def _no_overlap(entries: list, where: str) -> None:
    seen = set()
    for e in entries:
        if e["index"] in seen:
            _fail(where, f"shard {e['index']} is listed twice")
        seen.add(e["index"])


class RecordSpec:
    """What every record block of one shard must look like, from the manifest: checked before and after decoding."""

    def __init__(self, m: dict, entry: dict, where: str):
        r, sp = m["record"], m["sampler"]
        self.where, self.dtype = where, r["x_t"]["dtype"]
        self.np_dtype = np.dtype(STORAGE_NP[self.dtype])
        self.x_shape, self.target_shape = tuple(r["x_t"]["shape"]), tuple(r["target"]["shape"])
        self.records = entry["records"]
        self.traj = entry["trajectories"]
        self.kept = set(sp.get("kept_steps") or range(len(sp["timesteps"])))
        self.covered = covered_of(m)
        self.legal = np.array(sorted(legal_steps(m)), dtype=np.int64)
        self.grid = np.array(sp["timesteps"], dtype=np.int64)
        self.n_cond = m["embeddings"]["rows"] if m.get("embeddings") else 0
        self.per_step = records_per_step(m)
        self.seen: set = set()
        self.count = 0

    def bad(self, msg: str):
        raise BadShardError(f"{self.where}: {msg}")

    def check_array(self, shape: tuple, dtype: np.dtype, member: str) -> None:
        """Declared shape and dtype of x_t/target, before the array is read."""
        tail = self.x_shape if member == "x_t" else self.target_shape
        if dtype != self.np_dtype or len(shape) != 4 or tuple(shape[1:]) != tail or shape[0] > self.records:
            self.bad(f"{member} declares {dtype} {tuple(shape)}, the manifest says {self.np_dtype} (N<={self.records}, {', '.join(map(str, tail))})")

    def check_block(self, b) -> None:
        n = len(b.t)
        for name in ("x_t", "target"):
            a = getattr(b, name)
            self.check_array(a.shape, a.dtype, name)
        if n == 0:
            return
        for name in ("x_t", "target"):
            if not _finite(getattr(b, name), self.dtype):
                self.bad(f"{name} holds NaN or Inf values (traj {int(b.traj[0])}, step {int(b.step[0])})")
        if b.traj.min() < self.traj[0] or b.traj.max() >= self.traj[1]:
            self.bad(f"traj {int(b.traj.min())}..{int(b.traj.max())} outside the shard's trajectories {self.traj}")
        if b.step.min() < 0 or b.step.max() >= len(self.grid) or not set(np.unique(b.step).tolist()) <= self.kept:
            self.bad(f"step {sorted(set(b.step.tolist()) - self.kept)[:5]} not among the kept steps")
        if self.covered is None:
            off = b.t != self.grid[b.step]
        else:
            off = ~np.isin(b.t, self.legal)
        if off.any():
            i = int(np.argmax(off))
            self.bad(f"t={int(b.t[i])} at step {int(b.step[i])} is not on the manifest's schedule")
        if self.n_cond:
            if b.cond.min() < 0 or b.cond.max() >= self.n_cond:
                self.bad(f"cond row {int(b.cond.max())} outside the {self.n_cond} prompt embeddings")
        elif (b.cond != -1).any():
            self.bad("cond rows set in an unconditional cache")
        keys = (b.traj * (len(self.grid) + 1) + b.step).tolist()
        if self.per_step == 2:  # paired guidance records share (traj, step) and differ in cond
            keys = list(zip(keys, b.cond.tolist()))
        before = len(self.seen)
        self.seen.update(keys)
        if len(self.seen) != before + n:
            self.bad("duplicate (traj, step) records" if self.per_step == 1 else "duplicate (traj, step, cond) records")
        self.count += n
        if self.count > self.records:
            self.bad(f"more than the {self.records} records the manifest lists")

    def finish(self) -> None:
        if self.count != self.records:
            self.bad(f"{self.count} records, manifest says {self.records}")


EXPONENT = {"float16": (np.uint16, 0x7C00), "bfloat16": (np.uint16, 0x7F80), "float32": (np.uint32, 0x7F800000)}


def _finite(a: np.ndarray, dtype: str) -> bool:
    """No NaN/Inf: an all-ones exponent, tested on the bits (4x faster than np.isfinite on float16)."""
    bits, mask = EXPONENT[dtype]
    return not ((np.ascontiguousarray(a).view(bits) & mask) == mask).any()
