"""`blocks` students: the teacher with named parts removed and every kept weight copied from it
(BK-SDM, Kim et al. 2023, arXiv 2305.15798; SSD-1B / Segmind-Vega, Gupta et al. 2024, arXiv 2401.02677).

Parts of a diffusers UNet with n resolution levels (stage i = down block i and its mirror, up block n-1-i):
  mid           the whole mid-block                                   (mid_block_type=None)
  mid.attn      the mid-block's attention (UNet2DConditionModel: and its second resnet)
  stage.i.attn  the attention layers of stage i, down and up          (Attn/CrossAttn -> plain blocks)
  stage.i.layer one resnet/attention pair of stage i, down and up     (per-stage layers_per_block: conditional UNets)
  layers        one pair in every stage                               (UNet2DModel: one layers_per_block for all)
  level.k       the innermost level k = n-1 (when its width equals level n-2's, so the kept weights fit)
Within a stage, the down block keeps its first layers and the up block drops its second-to-last resnet: the
kept up resnets then see skip connections of the same width as in the teacher, so every kept tensor fits.
"""

from __future__ import annotations

import re

import diffusers
import torch

from ..errors import DkdmError

PRESETS = {
    # BK-SDM: Base removes one resnet/attention pair per stage, Small also the mid-block, Tiny also the innermost level
    "bk-base": ("layers*",),
    "bk-small": ("layers*", "mid"),
    "bk-tiny": ("layers*", "mid", "level*"),
    # SSD-1B-like: attention of the mid-block and one pair in each attention stage; Vega-like: also the attention of
    # the innermost attention stage (SSD-1B/Vega chose their layers by loss scans on SDXL: `dkdm students scan`)
    "ssd": ("mid.attn", "attn-stages.layer*"),
    "vega": ("mid.attn", "attn-stages.layer*", "innermost-attn*"),
}
_ATTN = {"AttnDownBlock2D": "DownBlock2D", "CrossAttnDownBlock2D": "DownBlock2D",
         "AttnUpBlock2D": "UpBlock2D", "CrossAttnUpBlock2D": "UpBlock2D"}
PER_BLOCK_KEYS = ("attention_head_dim", "num_attention_heads", "cross_attention_dim", "transformer_layers_per_block",
                  "only_cross_attention", "reverse_transformer_layers_per_block")


def _n(cfg: dict) -> int:
    return len(cfg["block_out_channels"])


def _conditional(cfg: dict) -> bool:
    return cfg.get("_class_name") == "UNet2DConditionModel" or "cross_attention_dim" in cfg


def _layers(cfg: dict) -> list[int]:
    lpb = cfg["layers_per_block"]
    return list(lpb) if isinstance(lpb, (list, tuple)) else [int(lpb)] * _n(cfg)


def _mid_has_attention(cfg: dict) -> bool:
    mt = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn" if _conditional(cfg) else "UNetMidBlock2D")
    if mt is None:
        return False
    return mt == "UNetMidBlock2DCrossAttn" if _conditional(cfg) else bool(cfg.get("add_attention", True))


def removable_parts(cfg: dict) -> list[str]:
    """Every single part this teacher lets us remove while keeping a loadable diffusers UNet."""
    n, layers = _n(cfg), _layers(cfg)
    parts = []
    if cfg.get("mid_block_type", "x") is not None:
        parts.append("mid")
    if _mid_has_attention(cfg):
        parts.append("mid.attn")
    for i in range(n):
        if cfg["down_block_types"][i] in _ATTN and cfg["up_block_types"][n - 1 - i] in _ATTN:
            parts.append(f"stage.{i}.attn")
    if _conditional(cfg):
        parts += [f"stage.{i}.layer" for i in range(n) if layers[i] >= 2]
    elif min(layers) >= 2:
        parts.append("layers")
    chans = cfg["block_out_channels"]
    if n >= 2 and chans[-1] == chans[-2]:
        parts.append(f"level.{n - 1}")
    return parts


def expand(names, cfg: dict) -> tuple[list[str], list[str]]:
    """Parts and presets -> (parts to remove, notes on what a preset could not remove from this teacher)."""
    avail, n = removable_parts(cfg), _n(cfg)
    attn_stages = [i for i in range(n) if f"stage.{i}.attn" in avail]
    out, notes = [], []

    def add(p):
        if p not in out:
            out.append(p)

    for name in names:
        if name in PRESETS:
            for rule in PRESETS[name]:
                optional, rule = rule.endswith("*"), rule.rstrip("*")
                want = {"layers": [p for p in avail if p.endswith(".layer") or p == "layers"],
                        "level": [p for p in avail if p.startswith("level.")],
                        "attn-stages.layer": [f"stage.{i}.layer" for i in attn_stages if f"stage.{i}.layer" in avail],
                        "innermost-attn": [f"stage.{attn_stages[-1]}.attn"] if attn_stages else []}.get(rule, [rule])
                want = [p for p in want if p in avail]
                if not want:
                    notes.append(f"{name}: no '{rule}' to remove in this teacher")
                    if not optional:
                        continue
                for p in want:
                    add(p)
        elif name in avail:
            add(name)
        else:
            raise DkdmError(f"cannot remove {name!r} from this teacher; removable parts: {', '.join(avail) or 'none'}; "
                            f"presets: {', '.join(PRESETS)}")
    out = _normalise(out)
    if names and not out:
        raise DkdmError(f"{', '.join(names) or 'no parts'} removes nothing from this teacher ({'; '.join(notes)}); "
                        f"removable parts: {', '.join(avail) or 'none'}")
    return out, notes


def _normalise(parts: list[str]) -> list[str]:
    """Drop parts another removed part already contains (the mid-block holds its attention; a level its stage)."""
    levels = {int(p.split(".")[1]) for p in parts if p.startswith("level.")}
    keep = []
    for p in parts:
        if p == "mid.attn" and "mid" in parts:
            continue
        if p.startswith("stage.") and int(p.split(".")[1]) in levels:
            continue
        keep.append(p)
    return keep


def student_config(cfg: dict, parts: list[str]) -> dict:
    """The teacher's config with `parts` removed."""
    c = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if not k.startswith("_")}
    n, cond = _n(cfg), _conditional(cfg)
    layers = _layers(cfg)
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    for p in parts:
        if p == "mid":
            c["mid_block_type"] = None
        elif p == "mid.attn":
            if cond:
                c["mid_block_type"] = "UNetMidBlock2D"
            else:
                c["add_attention"] = False
        elif p == "layers":
            layers = [v - 1 for v in layers]
        elif m := re.fullmatch(r"stage\.(\d+)\.attn", p):
            i = int(m[1])
            down[i], up[n - 1 - i] = _ATTN[down[i]], _ATTN[up[n - 1 - i]]
        elif m := re.fullmatch(r"stage\.(\d+)\.layer", p):
            layers[int(m[1])] -= 1
    c["down_block_types"], c["up_block_types"] = down, up
    if any(p.startswith("level.") for p in parts):
        c["block_out_channels"] = c["block_out_channels"][:-1]
        c["down_block_types"], c["up_block_types"] = down[:-1], up[1:]
        layers = layers[:-1]
        for k in PER_BLOCK_KEYS:
            if isinstance(c.get(k), list):
                c[k] = c[k][:-1] if k != "reverse_transformer_layers_per_block" else c[k][1:]
    c["layers_per_block"] = layers if cond else layers[0]
    return c


def teacher_name(name: str, cfg: dict, parts: list[str]) -> str:
    """The teacher parameter a kept student parameter is copied from."""
    n, layers = _n(cfg), _layers(cfg)
    shift = 1 if any(p.startswith("level.") for p in parts) else 0
    fewer = {int(p.split(".")[1]) for p in parts if p.endswith(".layer")} | (set(range(n)) if "layers" in parts else set())
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        k, kind, j, rest = int(m[1]) + shift, m[2], int(m[3]), m[4]
        stage = n - 1 - k
        if stage in fewer and j >= layers[stage] - 1:
            j += 1  # the teacher's second-to-last up resnet/attention is the removed one
        return f"up_blocks.{k}.{kind}.{j}.{rest}"
    m = re.match(r"up_blocks\.(\d+)\.(.*)", name)
    if m:
        return f"up_blocks.{int(m[1]) + shift}.{m[2]}"
    return name


def block_map(cfg: dict, parts: list[str]) -> dict[str, str]:
    """Student block -> the teacher block it was made from, for blocks whose outputs have the teacher's shape
    (feature KD compares these). A level drop takes the downsampler off the new last down block: not compared."""
    n = _n(cfg)
    shift = 1 if any(p.startswith("level.") for p in parts) else 0
    m = {f"down_blocks.{i}": f"down_blocks.{i}" for i in range(n - shift) if not (shift and i == n - 2)}
    m.update({f"up_blocks.{k}": f"up_blocks.{k + shift}" for k in range(n - shift)})
    return m


def build_blocks_student(teacher_unet, names) -> tuple[torch.nn.Module, dict]:
    """The teacher minus `names` (parts and presets), kept weights copied; returns (student, removal map)."""
    cfg = dict(teacher_unet.config)
    cfg["_class_name"] = type(teacher_unet).__name__
    parts, notes = expand(list(names), cfg)
    cls = type(teacher_unet)
    if cls not in (diffusers.UNet2DModel, diffusers.UNet2DConditionModel):
        raise DkdmError(f"a blocks student needs a UNet2DModel or UNet2DConditionModel teacher, got {cls.__name__}")
    scfg = student_config(cfg, parts)
    try:
        student = cls.from_config(scfg)
    except (ValueError, TypeError) as exc:
        raise DkdmError(f"removing {parts} leaves a UNet diffusers cannot build: {exc}") from exc
    tsd = teacher_unet.state_dict()
    sd, sources = {}, {}
    for name, p in student.state_dict().items():
        src = teacher_name(name, cfg, parts)
        if src not in tsd or tsd[src].shape != p.shape:
            raise DkdmError(f"removing {parts}: student tensor {name} has no teacher tensor of its shape ({src}); "
                            "this combination is not representable for this teacher")
        sd[name], sources[name] = tsd[src].detach().clone(), src
    student.load_state_dict(sd, strict=True)
    student.train(teacher_unet.training)  # same mode, same kernels: nothing removed gives the teacher bit for bit
    removal = {"kind": "blocks", "removed": parts, "asked": list(names), "notes": notes,
               "blocks": block_map(cfg, parts), "teacher_tensors_kept": len(sources), "teacher_tensors": len(tsd),
               "renamed": {s: t for s, t in sources.items() if s != t}}
    return student, removal
