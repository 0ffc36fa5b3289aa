"""dkdm: data-free knowledge distillation of diffusion models."""

__version__ = "0.2.0"
