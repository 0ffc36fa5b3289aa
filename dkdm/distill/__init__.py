"""The DKDM distiller: data sources, losses, the accelerate training loop, export."""
