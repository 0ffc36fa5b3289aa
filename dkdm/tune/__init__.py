"""`dkdm tune`: SustainDiffusion's search (sampler settings and prompt structure, no fine-tuning) for quality,
cost and bias at once, over the teacher and its students."""
