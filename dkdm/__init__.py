"""dkdm: data-free knowledge distillation of diffusion models."""

__version__ = "0.4.0"
