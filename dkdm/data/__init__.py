"""Real-image data sources (only what the offline demo and baselines need)."""
