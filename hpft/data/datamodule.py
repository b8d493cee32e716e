"""Needle video-QA data for Lightning: a JSONL-backed dataset (decord frames + prompt masks) and a thin DataModule.

The DataModule needs two facts about the model before it can build examples: the tokenizer and the model
config (placeholder id, tokens per tubelet, temporal patch, frame size). The training entry point calls
`datamodule.bind(tokenizer=tokenizer, model_config=vlm.config)` after loading the model and before `fit`;
`setup` refuses to run unbound.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from hpft.data.collate import VideoQACollator
from hpft.data.prompts import LETTERS, FrameLabels, encode_example, option_token_ids
from hpft.data.synthetic import ensure_dataset
from hpft.data.video import VideoError, read_frames
from hpft.errors import UserInputError
from hpft.models.processor import frame_labels_for, frames_to_pixel_values, tokens_per_tubelet

__all__ = ["NeedleDataModule", "NeedleQADataset", "default_cache_dir", "read_question_rows"]

_MAX_REPORTED = 20  # problems listed per malformed file; the count of the rest is given
_FIX = (
    "each line must be one JSON object with id, video (path relative to the JSONL's folder), question, options "
    "(4 option texts in A-D order) and answer (one of the options); regenerate synthetic data with "
    "`python -m hpft.data.synthetic --out DIR --split NAME` or correct the row"
)


def default_cache_dir() -> Path:
    """Where generated needle splits are cached: `$HPFT_CACHE/needle`, default `~/.cache/hpft/needle`."""
    return Path(os.environ.get("HPFT_CACHE", Path.home() / ".cache" / "hpft")).expanduser() / "needle"


def _row_problems(row: Any) -> list[str]:
    """What is wrong with one question record (empty when it is valid)."""
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {type(row).__name__}"]
    problems = []
    for name in ("id", "video", "question"):
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"field '{name}' must be a non-empty string, got {value!r}")
    options = row.get("options")
    if not isinstance(options, list) or len(options) != 4 or not all(isinstance(o, str) and o.strip() for o in options):
        problems.append(f"field 'options' must be a list of 4 non-empty option texts in A-D order, got {options!r}")
        options = None
    elif len(set(options)) != 4:
        problems.append(f"field 'options' has duplicate texts {options!r}: option-text scoring needs 4 distinct")
    answer = row.get("answer")
    if not isinstance(answer, str):
        problems.append(f"field 'answer' must be the correct option's text, got {answer!r}")
    elif options is not None and answer not in options:
        problems.append(f"field 'answer' {answer!r} is not one of the options {options!r}")
    letter = row.get("answer_letter")
    if letter is not None and options is not None and answer in options:
        if letter not in LETTERS or LETTERS[options.index(answer)] != letter:
            problems.append(f"field 'answer_letter' {letter!r} disagrees with answer {answer!r} in {options!r}")
    if "kind" in row and not isinstance(row["kind"], str):
        problems.append(f"field 'kind' must be a string, got {row['kind']!r}")
    return problems


def read_question_rows(path: str | os.PathLike[str]) -> list[dict]:
    """Read and validate a question JSONL, reporting every malformed row at once.

    Args:
        path: `<split>.jsonl` (fields as written by `hpft.data.synthetic.generate`).

    Returns:
        The rows, in file order.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: Naming `file:line`, the field and the fix for each malformed row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file not found: {path}")
    rows, problems = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"{path}:{lineno}: not valid JSON ({err.msg}, column {err.colno})")
                continue
            problems.extend(f"{path}:{lineno}: {p}" for p in _row_problems(row))
            rows.append(row)
    if problems:
        more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
        listed = "\n  - ".join(problems[:_MAX_REPORTED])
        raise UserInputError(f"malformed question file {path}:\n  - {listed}{more}\nFix: {_FIX}.")
    if not rows:
        raise ValueError(f"question file {path} holds no rows. Fix: {_FIX}.")
    return rows


class NeedleQADataset(Dataset):
    """Video questions from a JSONL file: decoded frames as tubelets, the prompt with its masks, option candidates.

    Item `i` is a dict: `id`, `kind`, `pixel_values_videos` `(num_frames / temporal_patch, temporal_patch * 3,
    H, W)` float32 in `[0, 1]`, `prompt` (`EncodedPrompt` with the answer as the trained target),
    `answer_index` (0-3), `candidates` (4 id lists: option text + `</s>`). `VideoQACollator` batches them.

    Rows are validated when the dataset is built (a malformed row raises `ValueError` naming `file:line`);
    missing videos are reported then too, and a corrupt one raises `VideoError` when it is read.

    Args:
        jsonl_path: Question file; each row's `video` is relative to the file's folder.
        num_frames: Frames sampled uniformly per video (`hpft.data.video.sample_frame_indices`).
        tokenizer: The model's tokenizer.
        tokens_per_tubelet: Decoder tokens per tubelet (`hpft.models.processor.tokens_per_tubelet`).
        video_token_id: The placeholder id the model replaces with video features (`image_token_id` for
            `nemotron_h_omni`).
        temporal_patch_size: Frames per tubelet (the model's `video_temporal_patch_size`).
        image_size: Expected frame side in px (None: not checked); frames are not resized.
        frame_labels: The model's prompt layout (`hpft.models.processor.frame_labels_for`); None: plain.
    """

    def __init__(
        self,
        jsonl_path: str | os.PathLike[str],
        num_frames: int,
        tokenizer,
        tokens_per_tubelet: int,
        video_token_id: int,
        temporal_patch_size: int = 2,
        image_size: int | None = None,
        frame_labels: FrameLabels | None = None,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.path = Path(jsonl_path)
        self.rows = read_question_rows(self.path)
        self.root = self.path.parent
        self.num_frames = int(num_frames)
        self.tokenizer = tokenizer
        self.tokens_per_tubelet = int(tokens_per_tubelet)
        self.video_token_id = int(video_token_id)
        self.temporal_patch_size = int(temporal_patch_size)
        self.image_size = image_size
        self.frame_labels = frame_labels
        self.num_visual = -(-self.num_frames // self.temporal_patch_size) * self.tokens_per_tubelet
        missing = sorted({str(self.root / r["video"]) for r in self.rows if not (self.root / r["video"]).is_file()})
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise VideoError(
                f"{len(missing)} video file(s) named in {self.path} not found: {shown}. Video paths are relative to "
                f"{self.root}; regenerate synthetic data with `python -m hpft.data.synthetic` or fix the paths."
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        video = self.root / row["video"]
        frames = read_frames(video, self.num_frames)
        if self.image_size is not None and frames.shape[1:3] != (self.image_size, self.image_size):
            raise VideoError(
                f"video file {video} has {frames.shape[2]}x{frames.shape[1]} frames but the model expects "
                f"{self.image_size}x{self.image_size}; regenerate it at that size (synthetic: --size)"
            )
        pixels = frames_to_pixel_values(frames, self.temporal_patch_size)[0]
        prompt = encode_example(
            self.tokenizer,
            row["question"],
            row["options"],
            self.num_visual,
            answer=row["answer"],
            video_token_id=self.video_token_id,
            frame_labels=self.frame_labels,
        )
        return {
            "id": row["id"],
            "kind": row.get("kind", ""),
            "pixel_values_videos": pixels,
            "prompt": prompt,
            "answer_index": row["options"].index(row["answer"]),
            "candidates": option_token_ids(self.tokenizer, row["options"]),
        }


class ResumableSampler(DistributedSampler):
    """Seeded shuffling whose order depends only on (seed, epoch), sharded over ranks, able to start mid-epoch.

    Each epoch's order is one permutation of the dataset (the same for every rank count); rank `r` of `n` takes
    positions `r, r + n, r + 2n, ...` (the permutation padded by wrapping around so that every rank gets
    `ceil(size / n)` indices, as `DistributedSampler` does). With per-rank batch `b`, step `i` therefore trains on
    positions `[i*b*n, (i+1)*b*n)` of the permutation across all ranks: the same samples a single process with
    batch `b*n` sees at step `i`, which is what makes a DDP run comparable to a single-process one.

    Lightning calls `set_epoch` before each epoch. On a resume, the first epoch iterated is `start_epoch` and its
    first `skip` indices *of this rank* (the batches already trained on) are skipped once, so a resumed run sees
    exactly the batches an uninterrupted run would. Being a `DistributedSampler`, Lightning does not wrap it again.
    """

    def __init__(
        self, size: int, seed: int, start_epoch: int = 0, skip: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        # DistributedSampler's own state is not used for ordering; it only needs a sized dataset and the ranks.
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        self.size, self.seed = size, seed
        self.epoch, self._skip_epoch, self._skip = start_epoch, start_epoch, skip
        self.per_rank = -(-size // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        total = self.per_rank * self.num_replicas
        if total > self.size:  # wrap around so that every rank yields the same number of indices
            order = torch.cat([order, order[: total - self.size]])
        mine = order[self.rank : total : self.num_replicas]
        skip = self._skip if self.epoch == self._skip_epoch else 0
        self._skip = 0  # only the resumed epoch is shortened, and only once
        return iter(mine[skip:].tolist())

    def __len__(self) -> int:
        return self.per_rank


class NeedleDataModule(LightningDataModule):
    """Train/val/test loaders over needle splits: given folders, or generated (and cached) on first use.

    Call `bind(tokenizer=..., model_config=...)` before `fit`/`validate`/`test`.

    Split folders: with `data_dir`, split `name` is `<data_dir>/<name>/<name>.jsonl` (the generator's layout,
    e.g. `tests/fixtures/needle_tiny`) or `<data_dir>/<name>.jsonl`. Without `data_dir`, each split is generated
    with `hpft.data.synthetic.ensure_dataset` into `default_cache_dir()` (`$HPFT_CACHE/needle`), videos of
    exactly `num_frames` frames, `<split>_videos` videos, seed `seed`, plus `generator_kwargs`.

    Args:
        data_dir: Folder holding the splits, or None to generate them.
        train_split: Training split name.
        val_split: Validation split name.
        test_split: Test split name (None: no test loader).
        train_videos: Videos generated for the training split (each gives `num_needles` questions).
        val_videos: Videos generated for the validation split.
        test_videos: Videos generated for the test split.
        num_frames: Frames sampled per video.
        batch_size: Samples per batch.
        num_workers: Data-loader worker processes.
        seed: Seed of the training shuffle and of generated data.
        generator_kwargs: Further `hpft.data.synthetic.generate` arguments for generated splits
            (e.g. `num_distractors`, `kinds`, `num_needles`).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = "test",
        train_videos: int = 256,
        val_videos: int = 32,
        test_videos: int = 32,
        num_frames: int = 32,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        generator_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        problems = []
        if num_frames < 1:
            problems.append(f"num_frames={num_frames} must be >= 1")
        if batch_size < 1:
            problems.append(f"batch_size={batch_size} must be >= 1")
        if num_workers < 0:
            problems.append(f"num_workers={num_workers} must be >= 0")
        if data_dir is None and num_frames % 8:
            problems.append(f"num_frames={num_frames} must be a multiple of 8 to generate needle videos")
        for name, value in (("train_videos", train_videos), ("val_videos", val_videos), ("test_videos", test_videos)):
            if value < 1:
                problems.append(f"{name}={value} must be >= 1")
        if problems:
            raise ValueError("invalid NeedleDataModule arguments:\n  - " + "\n  - ".join(problems))
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.sizes = {"train": train_videos, "val": val_videos, "test": test_videos}
        self.num_frames = int(num_frames)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.generator_kwargs = dict(generator_kwargs or {})
        self.tokenizer = None
        self.video_token_id: int | None = None
        self.tokens_per_tubelet: int | None = None
        self.temporal_patch_size = 2
        self.image_size: int | None = None
        self.frame_labels: FrameLabels | None = None
        self.datasets: dict[str, NeedleQADataset] = {}

    def bind(self, tokenizer, model_config) -> NeedleDataModule:
        """Attach the model facts examples depend on. Call once, after loading the model, before `fit`.

        Args:
            tokenizer: The model's tokenizer (needs `pad_token_id` or `eos_token_id`).
            model_config: The VLM config: `image_token_id` (the placeholder videos use), `force_image_size`,
                `downsample_ratio`, `video_temporal_patch_size`, `vision_config.patch_size`, `video_frame_labels`.

        Returns:
            self, for chaining.
        """
        placeholder = getattr(model_config, "image_token_id", None)
        if placeholder is None:
            raise ValueError("model_config.image_token_id is None: the model has no video placeholder token")
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token to pad batches with")
        self.tokenizer = tokenizer
        self.video_token_id = int(placeholder)
        self.tokens_per_tubelet = tokens_per_tubelet(model_config)
        self.temporal_patch_size = int(getattr(model_config, "video_temporal_patch_size", 2))
        self.image_size = getattr(model_config, "force_image_size", None)
        self.frame_labels = frame_labels_for(model_config)
        self.datasets = {}
        return self

    @property
    def num_visual(self) -> int:
        """Visual tokens per sample (`tubelets x tokens_per_tubelet`); needs `bind`."""
        self._require_bound()
        return -(-self.num_frames // self.temporal_patch_size) * self.tokens_per_tubelet

    def _require_bound(self) -> None:
        if self.tokenizer is None:
            raise RuntimeError(
                "NeedleDataModule is not bound to a model: call datamodule.bind(tokenizer=..., model_config=...) "
                "before fit/validate/test"
            )

    def _generate(self, part: str) -> Path:
        name = self.splits[part]
        return ensure_dataset(
            default_cache_dir(), name, self.sizes[part], self.num_frames, self.seed, **self.generator_kwargs
        )

    def split_file(self, part: str) -> Path:
        """The JSONL of a split (`part` is `train`, `val` or `test`), generating it when there is no `data_dir`."""
        name = self.splits[part]
        if name is None:
            raise ValueError(f"no {part} split configured")
        if self.data_dir is None:
            return self._generate(part) / f"{name}.jsonl"
        candidates = [self.data_dir / name / f"{name}.jsonl", self.data_dir / f"{name}.jsonl"]
        for path in candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"{part} split {name!r} not found: looked for {' and '.join(map(str, candidates))}. Set data_dir to the "
            f"folder holding the splits, or data_dir=null to generate them."
        )

    def prepare_data(self) -> None:
        """Generate missing splits into the cache (Lightning runs this on one process per node)."""
        if self.data_dir is None:
            for part, name in self.splits.items():
                if name is not None:
                    self._generate(part)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets a stage needs (`fit`: train + val; `validate`: val; `test`/`predict`: test)."""
        self._require_bound()
        parts = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(
            stage or "fit", ("train", "val", "test")
        )
        for part in parts:
            if part not in self.datasets and self.splits[part] is not None:
                self.datasets[part] = NeedleQADataset(
                    self.split_file(part),
                    self.num_frames,
                    self.tokenizer,
                    self.tokens_per_tubelet,
                    self.video_token_id,
                    temporal_patch_size=self.temporal_patch_size,
                    image_size=self.image_size,
                    frame_labels=self.frame_labels,
                )

    def _resume_sampler(self, size: int) -> ResumableSampler:
        """The training order, positioned after the batches the restored trainer has already consumed.

        Lightning restores `global_step` before it builds the training loader; with one optimizer step per
        `accumulate_grad_batches` batches, that fixes the epoch and the batch inside it.
        """
        trainer = self.trainer
        batches_done, world, rank = 0, 1, 0
        if trainer is not None:
            batches_done = trainer.global_step * getattr(trainer, "accumulate_grad_batches", 1)
            world, rank = getattr(trainer, "world_size", 1), getattr(trainer, "global_rank", 0)
        per_rank = -(-size // world)  # indices each rank draws per epoch (ResumableSampler pads by wrapping)
        per_epoch = -(-per_rank // self.batch_size)
        epoch, batch = divmod(batches_done, per_epoch)
        return ResumableSampler(
            size, self.seed, start_epoch=epoch, skip=batch * self.batch_size, num_replicas=world, rank=rank
        )

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        if part not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[part])
        if part not in self.datasets:
            raise ValueError(f"no {part} split configured")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return DataLoader(
            self.datasets[part],
            batch_size=self.batch_size,
            # Seeded per-epoch orders that resume mid-epoch at the exact batch (see `ResumableSampler`).
            sampler=self._resume_sampler(len(self.datasets[part])) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=VideoQACollator(pad),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (see `VideoQACollator` for the keys)."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order."""
        return self._loader("test", shuffle=False)
