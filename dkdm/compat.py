"""The three places dkdm reaches past a library's public API, each because no public one does the job. Checked
against accelerate 1.16.0, webdataset 1.0.2 and clean-fid 0.1.35 (docs STACK-NOTES); re-check them on upgrades."""

from __future__ import annotations

from typing import Any, Iterator

from .extras import require


def reset_accelerator_state() -> None:
    """accelerate keeps one process-wide state and refuses a second Accelerator with other settings (bf16 after
    fp32) in one Python process (a notebook, a test session). accelerate 1.16.0 has no public reset; its own tests
    call this one. The distributed setup (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)


def tar_samples(stream, where: str) -> Iterator[dict[str, Any]]:
    """webdataset samples (members grouped by key) from an open tar stream. The public `wds.tarfile_samples`
    (1.0.2) takes URLs and opens them itself; we verify a shard's bytes before reading, so the stages behind it
    are called on the verified in-memory stream."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return group_by_keys(tar_file_expander([{"url": where, "stream": stream}]))


def clean_fid_parts() -> tuple[Any, Any]:
    """clean-fid's Inception (TorchScript) class and its resizer factory. Its public `cleanfid.fid` imports
    torchvision, which has no CPU build for our torch; these two modules (0.1.35) do not."""
    what = "--features inception"
    return (require("cleanfid.inception_torchscript", what).InceptionV3W, require("cleanfid.resize", what).build_resizer)
