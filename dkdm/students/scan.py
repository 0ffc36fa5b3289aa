"""Layer-importance scan (SSD-1B's layer-level guidance, measured data-free on the cache): remove each part of
the teacher alone, keep every other weight, and measure the eps-MSE increase on cached records against the
teacher's targets, with params, FLOPs and forward latency; then remove the cheapest parts up to a budget."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ..cache.embeddings import read_embeddings
from ..cache.reader import CacheReader
from ..errors import DkdmError
from ..runtime import atomic_write_bytes, atomic_write_json, pick_device
from ..teacher import load_teacher
from .blocks import PRESETS, _normalise, build_blocks_student, expand, removable_parts
from .call import model_call
from .narrow import count_params


def cached_batches(reader: CacheReader, records: int, batch_size: int, device) -> list[tuple]:
    """The first `records` records of the cache stream (seed 0): the same records for every candidate."""
    emb = read_embeddings(reader.store)["emb"] if reader.manifest.get("embeddings") else None
    out, n = [], 0
    for x, t, target, cond in reader.loader(batch_size, num_workers=0, shuffle_buffer=4 * batch_size, seed=0, rank=0, world=1):
        k = min(len(x), records - n)
        c = emb[cond[:k]].to(device) if emb is not None else None
        out.append((x[:k].float().to(device), t[:k].to(device), target[:k].float().to(device), c))
        n += k
        if n >= records:
            break
    if n < records:
        raise DkdmError(f"the cache holds {n} records; ask for --records {n} or fewer")
    return out


@torch.no_grad()
def eps_loss(model, batches, channels: int) -> float:
    """Mean eps-MSE on the eps channels: distill's eps loss, written out so students/ imports nothing from distill/."""
    tot = sum(torch.nn.functional.mse_loss(model_call(model, x, t, c)[:, :channels], y[:, :channels].float()).item() * len(x)
              for x, t, y, c in batches)
    return tot / sum(len(b[0]) for b in batches)


@torch.no_grad()
def cost(model, batch) -> dict:
    """Params and FLOPs of one forward on one record (torch.utils.flop_counter)."""
    x, t, _, c = batch
    with FlopCounterMode(display=False) as fc:
        model_call(model, x[:1], t[:1], None if c is None else c[:1])
    return {"params": count_params(model), "flops": int(fc.get_total_flops())}


@torch.no_grad()
def latency_ratio(model, teacher, batch, repeats: int) -> dict:
    """Forward time on the batch relative to the teacher's, the two timed back to back in each round (median of the
    per-round ratios), so load from other processes hits both alike."""
    x, t, _, c = batch

    def once(m) -> float:
        t0 = time.perf_counter()
        model_call(m, x, t, c)
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    once(model), once(teacher)  # warm-up
    rounds = [(once(model), once(teacher)) for _ in range(repeats)]
    return {"latency_ms": 1000 * statistics.median(s for s, _ in rounds),
            "latency_ms_ratio": statistics.median(s / max(tt, 1e-9) for s, tt in rounds)}


def scan(teacher: str, cache: str, out: str | Path, records: int = 1024, batch_size: int = 256, repeats: int = 5,
         budget_params: float | None = None, budget_flops: float | None = None, base_recipe: str | None = None,
         device: str = "auto", progress: bool = True) -> dict:
    """Rank the removable parts; with a budget, pick parts and write OUT/recipe.toml. Writes scan.json/.md/.png."""
    for name, b in (("--budget-params", budget_params), ("--budget-flops", budget_flops)):
        if b is not None and not 0 < b < 1:
            raise DkdmError(f"{name} is a fraction of the teacher's, in (0, 1); got {b}")
    if records < 1 or batch_size < 1 or repeats < 1:
        raise DkdmError("--records, --batch-size and --repeats must be positive")
    out = Path(out)
    dev = pick_device(device)
    tch = load_teacher(teacher, dev)
    reader = CacheReader(cache, expect_fingerprint=tch.fingerprint)
    batches = cached_batches(reader, records, batch_size, dev)
    unet = tch.unet.float().eval()
    channels = int(unet.config.in_channels)
    cfg = {**dict(unet.config), "_class_name": type(unet).__name__}
    parts = removable_parts(cfg)
    if not parts:
        raise DkdmError(f"teacher {teacher} has no part a blocks student can remove")
    base = {"loss": eps_loss(unet, batches, channels), **cost(unet, batches[0])}

    def measure(names) -> dict:
        student, removal = build_blocks_student(unet, names)
        student = student.to(dev).eval()
        row = {"removed": removal["removed"], "loss": eps_loss(student, batches, channels), **cost(student, batches[0]),
               **latency_ratio(student, unet, batches[0], repeats)}
        row["loss_increase"] = row["loss"] - base["loss"]
        for k in ("params", "flops"):
            row[f"{k}_ratio"] = row[k] / base[k]
        return row

    presets = [p for p in PRESETS if _expands(unet, p)]
    bar = tqdm(total=len(parts) + len(presets), desc="scan", disable=not progress, unit="part")
    rows = {}
    for p in parts + presets:
        rows[p] = measure([p])
        bar.update(1)
    bar.close()
    ranked = sorted(parts, key=lambda p: rows[p]["loss_increase"])
    res = {"teacher": teacher, "cache": str(cache), "cache_id": reader.manifest["cache_id"], "records": records,
           "device": str(dev), "teacher_row": base, "parts": {p: rows[p] for p in ranked},
           "presets": {p: rows[p] for p in presets}, "ranked": ranked}
    if budget_params is not None or budget_flops is not None:
        res["budget"] = pick(ranked, measure, budget_params, budget_flops)
        write_recipe(out / "recipe.toml", teacher, str(cache), res["budget"]["removed"], base_recipe)
        res["budget"]["recipe"] = str(out / "recipe.toml")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "scan.json", res)
    atomic_write_bytes(out / "scan.md", markdown(res).encode())
    plot(res, out / "scan.png")
    return res


def _expands(unet, preset: str) -> bool:
    """Whether the preset removes anything representable from this teacher."""
    try:
        expand([preset], {**dict(unet.config), "_class_name": type(unet).__name__})
        return True
    except DkdmError:
        return False


def pick(ranked: list[str], measure, budget_params: float | None, budget_flops: float | None) -> dict:
    """Remove parts in order of least loss increase until the student fits the budget (SSD-1B's greedy rule)."""
    chosen, row = [], None
    for p in ranked:
        trial = _normalise(chosen + [p])
        if trial == chosen:
            continue
        chosen, row = trial, measure(trial)
        if (budget_params is None or row["params_ratio"] <= budget_params) and \
                (budget_flops is None or row["flops_ratio"] <= budget_flops):
            return {"budget_params": budget_params, "budget_flops": budget_flops, **row}
    got = f"params {row['params_ratio']:.2f}, FLOPs {row['flops_ratio']:.2f}" if row else "nothing removable"
    raise DkdmError(f"removing every part leaves {got} of the teacher; the budget (params {budget_params}, FLOPs "
                    f"{budget_flops}) needs a narrow or transformer student")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise DkdmError(f"cannot write {v!r} to TOML")


def dump_toml(data: dict, prefix: str = "") -> str:
    """Tables of scalars and lists (the shape of a dkdm recipe) as TOML."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    text = (f"[{prefix}]\n" if prefix and lines else "") + "".join(line + "\n" for line in lines)
    for k, v in data.items():
        if isinstance(v, dict):
            text += "\n" + dump_toml(v, f"{prefix}.{k}" if prefix else k)
    return text


def write_recipe(path: Path, teacher: str, cache: str, removed: list[str], base_recipe: str | None) -> None:
    """A recipe `dkdm distill --recipe` accepts: the base recipe (if any) with a blocks student removing `removed`."""
    import tomllib

    from ..config import Recipe, from_dict, resolve_recipe_path

    data = tomllib.loads(resolve_recipe_path(base_recipe).read_text()) if base_recipe else {}
    d = data.setdefault("distill", {})
    d.update(teacher=teacher, cache=cache, source="cache", student_kind="blocks", student_remove=list(removed))
    from_dict(Recipe, data)  # refuse now what `dkdm distill` would refuse later
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"# written by `dkdm students scan`: a blocks student of {teacher} without {', '.join(removed)}\n"
    atomic_write_bytes(path, (head + dump_toml(data)).encode())


def markdown(res: dict) -> str:
    b = res["teacher_row"]
    lines = [f"# Layer scan of {res['teacher']} on {res['records']} cached records ({res['cache_id']})", "",
             f"Teacher: eps-MSE vs cached target {b['loss']:.2e} (fp16 records), {b['params']:,} params, {b['flops'] / 1e6:.1f} MFLOPs/record, "
             f"latency: forward on one batch, relative to the teacher timed back to back (median of rounds).", "",
             "| removed | eps-MSE increase | params | FLOPs | latency |", "|---|---:|---:|---:|---:|"]
    for name, r in [*res["parts"].items(), *res["presets"].items()]:
        label = name if name in res["parts"] else f"{name} ({', '.join(r['removed'])})"
        lines.append(f"| {label} | {r['loss_increase']:.5f} | {r['params_ratio']:.2f} | {r['flops_ratio']:.2f} | "
                     f"{r['latency_ms_ratio']:.2f} |")
    if "budget" in res:
        r = res["budget"]
        lines += ["", f"Budget (params {r['budget_params'] or '-'}, FLOPs {r['budget_flops'] or '-'}): remove {', '.join(r['removed'])} -> "
                      f"params {r['params_ratio']:.2f}, FLOPs {r['flops_ratio']:.2f}, eps-MSE increase {r['loss_increase']:.5f}; "
                      f"recipe `{r['recipe']}`."]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["parts"]) + list(res["presets"])
    rows = [res["parts"].get(n) or res["presets"][n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
    colors = ["tab:blue" if n in res["parts"] else "tab:orange" for n in names]
    ax.barh(range(len(names)), [r["loss_increase"] for r in rows], color=colors)
    ax.set_yticks(range(len(names)), [f"{n}  (params {r['params_ratio']:.2f})" for n, r in zip(names, rows)])
    ax.invert_yaxis()
    ax.set_xlabel("eps-MSE increase on cached records\n(part removed alone, other weights inherited, no training)")
    ax.set_title(f"layer scan: {res['teacher']} (blue: parts, orange: presets)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
