"""Checkpoints for resuming: never half-written, and `last.ckpt` always holds the final step of a fit.

Writes: temp file in the target folder, fsync, then `os.replace` (`AtomicCheckpointIO`).

Lightning's own local save (`_atomic_save`) writes through an fsspec transaction whose temp file lives in the
system temp folder (`tempfile.mkstemp()`), then `shutil.move`s it into place. That is a rename, and atomic,
only when the temp folder and the run folder share a filesystem; on a cluster (local `/tmp`, network run
folder) the move becomes copy + delete, and a job killed during the copy leaves a truncated `last.ckpt` that
the next `ckpt_path=last` resume fails on. Writing the temp file next to its target keeps the final step a
same-filesystem rename in every layout.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """`torch.save(obj, path)` such that `path` holds either its old content or the complete new file.

    The bytes go to `<dir>/.<name>.tmp-<pid>` first, are fsynced, and the temp file is renamed over `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # serialise before touching the disk: a failing pickle leaves nothing behind
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with contextlib.suppress(OSError):  # persist the rename itself (not supported on every platform)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves go through `atomic_torch_save`; remote URLs use Lightning's path."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Save `checkpoint` to `path` atomically (see the module docstring)."""
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


class ResumableCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `last.ckpt` is rewritten when a fit ends on a step that was not saved yet.

    Lightning's `on_train_end` writes `last.ckpt` only when no checkpoint was written during the fit, so with
    `every_n_train_steps=40` and `max_steps=50` a resume would restart from step 40; it also writes one under
    `fast_dev_run`, which is meant to save nothing. Here the final step is always saved, except under
    `fast_dev_run` (same rules as every other save: `_should_skip_saving_checkpoint`).
    """

    def on_train_end(self, trainer, pl_module) -> None:
        """Save `last.ckpt` for the final step unless it was just saved (or `fast_dev_run`)."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
