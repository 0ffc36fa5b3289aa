"""A PNG of the same seeds, row by row: the teacher at DDIM-25, then each STUDENT@STEPS at its own scheduler.

    python -m dkdm.bench.fewstep_grid OUT.png RUN@1 RUN@2 ...
"""
import sys
import torch
from dkdm.evaluate.models import load_student_unet
from dkdm.seeds import evaluation_seeds
from dkdm.evaluate.sweep import scheduler_for
from dkdm.imaging import grid, save_png
from dkdm.own_sampler import own_scheduler
from dkdm.sampling import sample, unet_fn
from dkdm.teacher import load_teacher


def main() -> None:
    seeds = evaluation_seeds(10000, 12)  # `dkdm evaluate`'s first 12 samples
    t = load_teacher("builtin:digits", "cpu")
    rows = [sample(unet_fn(t.unet), scheduler_for("ddim", 25, "trailing", t.scheduler_config)[0], seeds, (1, 16, 16))]
    labels = ["teacher ddim-25"]
    for spec in sys.argv[2:]:
        path, k = spec.split("@")
        rows.append(sample(unet_fn(load_student_unet(path)), own_scheduler(path, int(k)), seeds, (1, 16, 16)))
        labels.append(spec)
    save_png(grid(torch.cat(rows), ncol=len(seeds), scale=4), sys.argv[1])
    print("rows:", labels)


if __name__ == "__main__":
    main()
