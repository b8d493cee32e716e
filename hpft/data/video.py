"""Read video frames with decord: uniform frame sampling and one error type for unreadable files.

Every video the project reads (synthetic needle videos, benchmark videos) goes through `read_frames`, so
a missing or corrupt file always surfaces as a `VideoError` that names the file and says what to do, never
as a raw decord traceback from deep inside a data loader worker.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hpft.errors import UserInputError

__all__ = ["VideoError", "read_frames", "sample_frame_indices", "video_num_frames"]


class VideoError(UserInputError):
    """A video file is missing, unreadable or has no decodable frames.

    The message always names the file and the likely fix.
    """


def sample_frame_indices(num_total: int, num_frames: int) -> list[int]:
    """Uniformly sample frame indices, exactly as lmms-eval does for Video-MME.

    Uses **linspace with truncation**: `np.linspace(0, num_total - 1, num_frames, dtype=int)`, the formula
    of lmms-eval's `videomme` task (`load_video_decord`), so our frames match the reference harness. The
    first and last frames are always included (for `num_frames >= 2`). When `num_frames > num_total`, indices
    **repeat** (each frame is used about `num_frames / num_total` times), so the output length is always
    `num_frames` and every sample in a batch has the same visual-token count.

    When `num_frames == num_total` the result is `0 .. num_total - 1`, which keeps the 2-frame tubelets of
    the synthetic videos aligned (their objects only move at even frame boundaries).

    Args:
        num_total: Number of frames in the video, >= 1.
        num_frames: Number of frames to sample, >= 1.

    Returns:
        `num_frames` non-decreasing indices in `[0, num_total)`.

    Raises:
        ValueError: If either count is < 1.
    """
    if num_total < 1:
        raise ValueError(f"num_total must be >= 1 (the video has no frames), got {num_total}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return np.linspace(0, num_total - 1, num_frames, dtype=int).tolist()


def _open(path: str | os.PathLike[str]):
    """Open a decord VideoReader, turning every failure into a VideoError."""
    path = Path(path)
    if not path.is_file():
        # Checked before decord: decord reports a missing file as a generic "Error reading" RuntimeError.
        raise VideoError(
            f"video file not found: {path}. Check the path (benchmark videos live under <root>/data/ or "
            f"<root>/videos/); for synthetic needle data, regenerate it with `python -m hpft.data.synthetic`."
        )
    import decord  # imported lazily: only code that really reads videos pays for the native library

    try:
        # num_threads=1: data-loader workers already parallelise; decord's own threads would oversubscribe.
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except (RuntimeError, AssertionError, decord.DECORDError) as exc:
        # decord raises RuntimeError on open failures and AssertionError on a zero frame count.
        raise VideoError(
            f"cannot decode video file {path}: {exc}. The file is corrupt, truncated or not a video; "
            f"re-download or regenerate it (synthetic data: delete it and rerun `python -m hpft.data.synthetic`)."
        ) from None
    return reader


def video_num_frames(path: str | os.PathLike[str]) -> int:
    """Number of frames decord reports for a video file.

    Args:
        path: Video file.

    Returns:
        Frame count (>= 1).

    Raises:
        VideoError: If the file is missing or cannot be decoded.
    """
    return len(_open(path))


def read_frames(path: str | os.PathLike[str], num_frames: int | None = None) -> np.ndarray:
    """Decode uniformly sampled frames of a video with decord.

    Args:
        path: Video file (any container/codec FFmpeg reads).
        num_frames: Frames to sample with `sample_frame_indices`; `None` reads every frame.

    Returns:
        Frames, shape `(T, H, W, 3)`, dtype uint8, RGB, with `T = num_frames` (or the file's frame count).

    Raises:
        VideoError: If the file is missing, corrupt, or a frame cannot be decoded.
        ValueError: If `num_frames < 1`.
    """
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}")
    reader = _open(path)
    total = len(reader)
    indices = list(range(total)) if num_frames is None else sample_frame_indices(total, num_frames)
    import decord

    try:
        frames = reader.get_batch(indices).asnumpy()
    except (RuntimeError, IndexError, decord.DECORDError) as exc:
        # A header can parse while the packets are damaged (e.g. a truncated download): decoding fails here.
        raise VideoError(
            f"cannot decode frames {indices[0]}..{indices[-1]} of video file {path}: {exc}. The file is corrupt "
            f"or truncated; re-download or regenerate it."
        ) from None
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
        raise VideoError(f"video file {path} decoded to an unexpected array of shape {frames.shape}")
    return frames
