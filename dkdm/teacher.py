"""Load a diffusers teacher (builtin, local folder or hub id), fingerprint it, and query it."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import UNet2DModel

from .errors import DkdmError
from .modelcall import model_call
from .weights import check_finite, load_unet

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTINS = {"digits": BUILTIN_DIR / "digits-teacher", "digits-t2i": BUILTIN_DIR / "digits-t2i"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Teacher:
    unet: UNet2DModel  # or UNet2DConditionModel for text-conditioned teachers
    scheduler_config: dict  # the training scheduler's config: the noise schedule the teacher knows
    source: str
    fingerprint: str
    text_encoder: torch.nn.Module | None = None  # conditional teachers: e.g. CLIPTextModel
    tokenizer: object | None = None
    vae: torch.nn.Module | None = None  # latent teachers (Stable Diffusion layout): the U-Net walks VAE latents

    @property
    def latent(self) -> bool:
        return self.vae is not None

    @property
    def conditional(self) -> bool:
        return self.text_encoder is not None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        s = self.unet.config.sample_size
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        return (self.unet.config.in_channels, h, w)

    @property
    def learned_variance(self) -> bool:
        return self.unet.config.out_channels == 2 * self.unet.config.in_channels

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher output at (x, t[, prompt embeddings]): eps, or eps and variance channels."""
        if self.conditional and cond is None:
            raise DkdmError(f"teacher {self.source} is text-conditioned: give prompts (--prompts FILE)")
        return model_call(self.unet, x, t, cond if self.conditional else None)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings [n, seq, dim] float32, attention mask [n, seq]) as the pipeline would compute them."""
        if not self.conditional:
            raise DkdmError(f"teacher {self.source} is unconditional; it takes no prompts")
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        dev = next(self.text_encoder.parameters()).device
        emb = self.text_encoder(tok.input_ids.to(dev))[0]
        return emb.float().cpu(), tok.attention_mask.cpu()

    def describe(self) -> dict:
        d = {
            "source": self.source,
            "class": type(self.unet).__name__,
            "config": {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")},
            "fingerprint": self.fingerprint,
        }
        if self.conditional:
            d["text_encoder"] = {"class": type(self.text_encoder).__name__, "config": self.text_encoder.config.to_dict()}
            d["tokenizer"] = {"class": type(self.tokenizer).__name__, "model_max_length": self.tokenizer.model_max_length}
        if self.latent:
            d["vae"] = vae_info(self.vae)
        return d


def load_vae(folder: Path):
    """A latent teacher's vae/ through the safetensors-only loader: a teacher folder may come from another team."""
    from diffusers import AutoencoderKL

    return load_unet(AutoencoderKL, folder, "vae")


def vae_info(vae) -> dict:
    """What a cache of latents depends on: the VAE's weights (fingerprint) and its latent scaling factor."""
    return {"class": type(vae).__name__, "fingerprint": fingerprint(vae),
            "scaling_factor": float(vae.config.scaling_factor), "latent_channels": int(vae.config.latent_channels)}


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes: identical weights, identical id."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _scheduler_config_from(folder_or_id: str, subfolder: str | None) -> dict:
    cls = diffusers.DDPMScheduler
    sched = cls.from_pretrained(folder_or_id, subfolder=subfolder)
    return dict(sched.config)


def _unet_class(folder: Path):
    """UNet2DModel, or the class the folder's config names (UNet2DConditionModel for text-to-image)."""
    try:
        name = json.loads((folder / "config.json").read_text()).get("_class_name", "UNet2DModel")
    except (OSError, ValueError):
        return UNet2DModel
    if name not in ("UNet2DModel", "UNet2DConditionModel"):
        raise DkdmError(f"teacher {folder} is a {name}; dkdm supports UNet2DModel and UNet2DConditionModel teachers")
    return getattr(diffusers, name)


def load_text_parts(path: Path):
    """A conditional pipeline folder's text_encoder/ and tokenizer/ (transformers classes named in their configs)."""
    import transformers

    cfg = json.loads((path / "text_encoder" / "config.json").read_text())
    enc_cls = getattr(transformers, (cfg.get("architectures") or ["CLIPTextModel"])[0])
    encoder = enc_cls.from_pretrained(path / "text_encoder", use_safetensors=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path / "tokenizer")
    return encoder, tokenizer


def _load_from(where: str) -> tuple[UNet2DModel, dict]:
    """Pipeline layout (unet/, scheduler/) first, then a flat model repo (config.json at the root)."""
    path = Path(where)
    if path.is_dir():
        if (path / "unet").is_dir():
            cls = _unet_class(path / "unet")
            return load_unet(cls, where, "unet"), _read_scheduler(path / "scheduler")
        if (path / "config.json").is_file():
            return load_unet(_unet_class(path), where), _read_scheduler(path, model_folder=True)
        raise DkdmError(f"teacher folder {where} has neither unet/ (pipeline layout) nor config.json (model layout)")
    try:  # hub id: same two layouts
        try:
            unet = UNet2DModel.from_pretrained(where, subfolder="unet")
            return unet, _scheduler_config_from(where, "scheduler")
        except OSError:
            return UNet2DModel.from_pretrained(where), _scheduler_config_from(where, None)
    except Exception as exc:  # offline, missing repo, private repo...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DkdmError(f"could not load teacher {where!r} from the hub: {first}") from exc


def _read_scheduler(folder: Path, model_folder: bool = False) -> dict:
    # in a flat model folder config.json is the model's (it may even carry num_train_timesteps: null)
    for name in ("scheduler_config.json",) if model_folder else ("scheduler_config.json", "config.json"):
        f = folder / name
        if f.is_file():
            try:
                cfg = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DkdmError(f"{f} is not valid JSON ({exc})") from None
            if isinstance(cfg, dict) and isinstance(cfg.get("num_train_timesteps"), int) and cfg["num_train_timesteps"] > 0:
                return cfg
    # No scheduler saved next to the model: assume the DDPM default the model was most likely trained with.
    return dict(diffusers.DDPMScheduler().config)


def resolve_source(source: str) -> str:
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name not in BUILTINS:
            raise DkdmError(f"unknown builtin teacher {source!r}; available: {', '.join('builtin:' + k for k in BUILTINS)}")
        return str(BUILTINS[name])
    p = Path(source).expanduser()
    if p.exists():
        return str(p)
    if source.startswith(("/", ".", "~")) or not HUB_ID.match(source):
        raise DkdmError(f"teacher path {source!r} does not exist (give a local folder, a hub id org/name, or builtin:digits)")
    return source


def load_teacher(source: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Teacher:
    where = resolve_source(source)
    unet, sched_cfg = _load_from(where)
    encoder = tokenizer = vae = None
    if type(unet).__name__ == "UNet2DConditionModel":
        if not (Path(where) / "text_encoder").is_dir() or not (Path(where) / "tokenizer").is_dir():
            raise DkdmError(f"conditional teacher {source} needs text_encoder/ and tokenizer/ folders next to unet/")
        encoder, tokenizer = load_text_parts(Path(where))
        parts = {"unet": unet, "text_encoder": encoder}
        if (Path(where) / "vae").is_dir():  # a latent teacher: records mean something only through its VAE
            vae = parts["vae"] = load_vae(Path(where))
        # one id over all networks: a different text encoder makes different records, another VAE other images
        fp = fingerprint(torch.nn.ModuleDict(parts))
        encoder = encoder.to(device).eval().requires_grad_(False)
        if vae is not None:
            vae = vae.to(device).eval().requires_grad_(False)
    else:
        fp = fingerprint(unet)
    check_finite(unet, f"teacher {source}")
    unet = unet.to(device)
    if dtype != torch.float32:
        unet = unet.to(dtype=dtype)
    unet = unet.eval().requires_grad_(False)
    return Teacher(unet=unet, scheduler_config=sched_cfg, source=source, fingerprint=fp, text_encoder=encoder, tokenizer=tokenizer, vae=vae)
