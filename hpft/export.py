"""Entry point `python -m hpft.export`: a training run → a Hugging Face model folder with its reduction settings → Hub.

    python -m hpft.export ckpt=outputs/<run> out=exports/<name>                 # LoRA merged into the weights
    python -m hpft.export ckpt=outputs/<run> out=exports/<name> merge=false     # a PEFT adapter on the base model
    python -m hpft.export ckpt=outputs/<run>/checkpoints/last.ckpt out=exports/<name> push_to=alice/omni-needle
    python -m hpft.export ckpt=outputs/<run> out=exports/<name> push_to=alice/omni-needle dry_run=true

`ckpt` is a training run folder, one of its Lightning `.ckpt` files, or a DeepSpeed (ZeRO) checkpoint folder, whose
shards are consolidated first (needs the `deepspeed` extra). The base model and the LoRA settings come from the
run's `config.yaml`, exactly as `python -m hpft.evaluate` places the weights (`hpft.checkpoints.load_trained`).

The folder `out` (written next to its final place, then renamed: a failed export leaves nothing half-written):

* `merge=true` (default): `config.json`, `model.safetensors`, `generation_config.json` — a plain model that
  `AutoModelForImageTextToText.from_pretrained(out)` loads;
* `merge=false`: `adapter_config.json` (`base_model_name_or_path` names the base model) and
  `adapter_model.safetensors` (LoRA, plus the trained projector as `modules_to_save`): `PeftModel.from_pretrained(
  base, out)` loads it, and so does `AutoModelForImageTextToText.from_pretrained(out)` (transformers loads the base
  named there, then the adapter). No `config.json`, so that transformers goes to the base model for the weights;
* both: the tokenizer, the base model's video processor config, `reduction.json` (the schedule, keep and scorer
  the run trained and evaluated with, `ReductionConfig.as_dict()`: hpft applies it when it loads the folder,
  `hpft.models.loading.load_reduction_settings`), and `README.md`, a model card whose scores are the run's
  measured ones (`metrics.json`, and every `results.json` in the run folder; `hpft.model_card`).

`push_to=<user or org>/<name>` creates the repo if needed (private unless `private=false`) and uploads the folder
with `huggingface_hub`. The token comes from `HF_TOKEN` or the Hugging Face login cache (`hf auth login`), never
from a config file, and is never printed. `dry_run=true` exports and lists the files that would be uploaded, and
uploads nothing. A mistake (missing ckpt, a non-empty `out` without `overwrite=true`, a malformed `push_to`, no
token) exits with code 2 and one message listing every problem.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import hpft.config_builders  # noqa: F401  (registers the ${hpft_root:} resolver used by run configs)
from hpft.checkpoints import load_trained, run_config_for
from hpft.cli import exits_on_user_error, run
from hpft.config_checks import _model_config
from hpft.errors import UserInputError
from hpft.model_card import model_card
from hpft.models.loading import REDUCTION_FILE, resolve_model_path
from hpft.peft_setup import COMPONENTS, lora_module_names, merge_lora

__all__ = [
    "ExportError",
    "RunSource",
    "check_export",
    "consolidate_deepspeed",
    "export_checkpoint",
    "find_results",
    "is_deepspeed_checkpoint",
    "list_files",
    "locate_run",
    "push_folder",
    "run_export",
]

log = logging.getLogger(__name__)

DEEPSPEED_HINT = "pip install -e '.[deepspeed]'  (the `deepspeed` extra of hpft)"
# Files of the base model folder that describe preprocessing, copied as they are (the tokenizer is saved instead).
PROCESSOR_FILES = (
    "video_preprocessor_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.jinja",
    "chat_template.json",
)
_PROJECTOR = tuple(name for name, component in COMPONENTS.items() if component == "projector")
_CACHE_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/[^/]+/?$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_FORMS = "a training run folder (holding checkpoints/last.ckpt and config.yaml), a .ckpt file of such a run, or a "
_FORMS += "DeepSpeed checkpoint folder"


class ExportError(UserInputError):
    """Every problem found in the export settings, as one message."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join("  - " + p.strip().replace("\n", "\n    ") for p in self.problems)
        super().__init__(
            f"cannot export ({len(self.problems)} problem{'s' * (len(self.problems) != 1)}):\n{lines}\n"
            "Usage: python -m hpft.export ckpt=<run folder or .ckpt> out=<new folder> [merge=true] "
            "[push_to=<user>/<name>] [dry_run=false] [overwrite=false]"
        )


# --------------------------------------------------------------------------------------------- where the run is


@dataclass(frozen=True)
class RunSource:
    """What `ckpt=` points at, resolved.

    Attributes:
        checkpoint: the Lightning `.ckpt` file, or the DeepSpeed checkpoint folder.
        config: the run's `config.yaml`.
        deepspeed: whether `checkpoint` is a sharded DeepSpeed checkpoint folder (consolidated before loading).
    """

    checkpoint: Path
    config: Path
    deepspeed: bool = False

    @property
    def run_dir(self) -> Path:
        """The run folder: where `config.yaml`, `metrics.json` and evaluations' `results.json` are."""
        return self.config.parent


def is_deepspeed_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a DeepSpeed checkpoint folder (what Lightning's DeepSpeed strategy saves as `<name>.ckpt/`).

    Such a folder holds a `latest` file naming its tag folder, and `*zero_pp_rank_*` shard files in the tag folder
    (or directly inside, when pointed at the tag folder itself).
    """
    path = Path(path)
    if not path.is_dir():
        return False
    return (path / "latest").is_file() or any(path.glob("*zero_pp_rank_*")) or any(path.glob("*/*zero_pp_rank_*"))


def locate_run(ckpt: str | os.PathLike[str]) -> RunSource:
    """Resolve `ckpt=` to the checkpoint to load and the run's `config.yaml`.

    Raises:
        UserInputError: naming the path and the accepted forms when it is none of them.
    """
    path = Path(ckpt).expanduser().resolve()
    if not path.exists():
        raise UserInputError(f"ckpt={ckpt} does not exist; pass {_FORMS}")
    if path.is_dir() and not is_deepspeed_checkpoint(path):
        last = path / "checkpoints" / "last.ckpt"
        if last.is_file() or is_deepspeed_checkpoint(last):
            return RunSource(last, run_config_for(last), deepspeed=last.is_dir())
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            raise UserInputError(f"ckpt={ckpt} is an exported model folder already; pass {_FORMS}")
        raise UserInputError(f"ckpt={ckpt} is a folder without checkpoints/last.ckpt; pass {_FORMS}")
    return RunSource(path, run_config_for(path), deepspeed=path.is_dir())


def _deepspeed_available() -> bool:
    from lightning.pytorch.strategies.deepspeed import _DEEPSPEED_AVAILABLE

    return bool(_DEEPSPEED_AVAILABLE)


def consolidate_deepspeed(checkpoint_dir: str | os.PathLike[str], output_file: str | os.PathLike[str]) -> Path:
    """Gather a ZeRO-2/3 checkpoint folder's shards into one fp32 Lightning checkpoint file.

    Uses Lightning's `convert_zero_checkpoint_to_fp32_state_dict` (DeepSpeed's `zero_to_fp32` with the Lightning
    state kept), so the result loads like any other checkpoint (`hpft.checkpoints.load_trained`).

    Args:
        checkpoint_dir: the DeepSpeed checkpoint folder (holding `latest` and the tag folder).
        output_file: where to write the consolidated checkpoint (as large as the fp32 model).

    Returns:
        `output_file`.

    Raises:
        UserInputError: when deepspeed is not installed (naming the extra that installs it).
    """
    if not _deepspeed_available():
        raise UserInputError(
            f"ckpt={checkpoint_dir} is a DeepSpeed (ZeRO) checkpoint; consolidating its shards needs deepspeed, "
            f"which is not installed: {DEEPSPEED_HINT}"
        )
    if not torch.cuda.is_available():  # DeepSpeed probes for CUDA at import; say CPU up front (no warnings)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    convert_zero_checkpoint_to_fp32_state_dict(checkpoint_dir, output_file)
    return Path(output_file)


# --------------------------------------------------------------------------------------------- checks


def _check_out(out: Path, overwrite: bool, source: RunSource | None) -> list[str]:
    if source is not None and (out == source.run_dir or out in source.run_dir.parents):
        return [f"out={out} holds the training run being exported; choose another folder"]
    if out.exists() and not out.is_dir():
        return [f"out={out} is a file; pass a folder path (created if missing)"]
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        return [f"out={out} exists and is not empty; pass overwrite=true to replace it, or another out"]
    return []


def _check_push_to(push_to: Any) -> list[str]:
    if push_to is None:
        return []
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    problem = f"push_to={push_to!r} must be a Hub repo id <user or org>/<name>, e.g. push_to=alice/omni-needle"
    if not isinstance(push_to, str) or not _REPO_ID.match(push_to):
        return [problem]
    try:
        validate_repo_id(push_to)
    except HFValidationError as err:
        return [f"{problem} ({err})"]
    return []


def check_export(
    ckpt: Any,
    out: Any,
    push_to: Any = None,
    overwrite: Any = False,
    dry_run: Any = False,
    merge: Any = True,
    model_path: Any = None,
) -> tuple[RunSource | None, list[str]]:
    """Every startup check of an export, nothing heavy (no weights read).

    Returns:
        `(the resolved RunSource or None, every problem found)`.
    """
    problems: list[str] = []
    for key, value in (("overwrite", overwrite), ("dry_run", dry_run), ("merge", merge)):
        if not isinstance(value, bool):
            problems.append(f"{key}={value!r} must be true or false")
    source = None
    if ckpt is None:
        problems.append(f"ckpt is required: pass ckpt=<...>, {_FORMS}")
    else:
        try:
            source = locate_run(str(ckpt))
        except UserInputError as err:
            problems.append(str(err))
    if source is not None:
        run_cfg = OmegaConf.load(source.config)
        path = model_path if model_path is not None else OmegaConf.select(run_cfg, "model.path")
        _, model_problems = _model_config(OmegaConf.create({"model": {"path": path}}))
        problems += [
            f"base model of the run: {p}" + ("" if model_path else "; or pass model_path=<folder>")
            for p in model_problems
        ]
        if OmegaConf.select(run_cfg, "reduction") is None:
            problems.append(f"{source.config} has no `reduction` node: not the config of an hpft training run")
    if out is None:
        problems.append("out is required: pass out=<folder to write> (created; must be empty unless overwrite=true)")
    else:
        problems += _check_out(Path(str(out)).expanduser().resolve(), overwrite is True, source)
    push_problems = _check_push_to(push_to)
    problems += push_problems
    if push_to is not None and not push_problems and dry_run is False:
        from huggingface_hub import get_token

        if get_token() is None:  # presence only: the token itself is never read into hpft
            problems.append(
                f"push_to={push_to} needs a Hugging Face token: set HF_TOKEN in the environment or run "
                "`hf auth login` (dry_run=true lists the files without one)"
            )
    return source, problems


# --------------------------------------------------------------------------------------------- what the run left


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("skipping %s: %s", path, err)
        return None
    return data if isinstance(data, dict) else None


def find_results(run_dir: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """The `results.json` of every evaluation inside a run folder, with its path relative to the folder.

    The in-training callback writes one per evaluation step (`benchmarks/<name>/step-<N>/results.json`): only the
    latest step of each is kept. `wandb/` and `checkpoints/` are not searched.

    Returns:
        `[(relative path, results)]`, sorted by path.
    """
    run_dir = Path(run_dir)
    latest: dict[str, tuple[int, Path]] = {}
    for path in run_dir.rglob("results.json"):
        rel = path.relative_to(run_dir)
        if rel.parts[0] in ("wandb", "checkpoints"):
            continue
        step = re.fullmatch(r"step-(\d+)", path.parent.name)
        group = str(rel.parent.parent if step else rel.parent)
        number = int(step[1]) if step else -1
        if group not in latest or number > latest[group][0]:
            latest[group] = (number, path)
    found = []
    for _, path in sorted(latest.values(), key=lambda item: str(item[1])):
        data = _read_json(path)
        if data is not None:
            found.append((str(path.relative_to(run_dir)), data))
    return found


def _checkpoint_step(path: Path) -> int | None:
    # mmap: only the few bytes of the step are read, even from a full checkpoint.
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (the step is informative only; the load itself reports bad files)
        return None
    step = checkpoint.get("global_step") if isinstance(checkpoint, Mapping) else None
    return int(step) if isinstance(step, int) else None


def _base_reference(path: str) -> str:
    """How the exported files name the base model: a hub id where the folder is a hub cache snapshot."""
    match = _CACHE_SNAPSHOT.search(path.replace(os.sep, "/"))
    return f"{match['org']}/{match['name']}" if match else path


def _base_folder(source: str) -> Path | None:
    """The local folder of the base model (a hub id resolves to its cached snapshot, never downloaded)."""
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception as err:  # noqa: BLE001  (only the processor files depend on it: warn, do not fail)
        log.warning("base model %s has no local folder (%s): its processor files are not copied", source, err)
        return None


# --------------------------------------------------------------------------------------------- writing


def _write_adapter(vlm: torch.nn.Module, folder: Path, base_model: str) -> None:
    """Save the injected LoRA (and the trained projector) in PEFT's format: what `PeftModel.save_pretrained` writes."""
    import copy

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = copy.deepcopy(vlm.peft_config["default"])
    config.base_model_name_or_path = base_model
    config.inference_mode = True
    # The projector trains in full next to LoRA (hpft.peft_setup.apply_freeze_policy): PEFT ships such modules
    # as `modules_to_save`, stored whole in the adapter file.
    projector = [name for name in _PROJECTOR if hasattr(vlm, name)]
    config.modules_to_save = projector or None
    config.save_pretrained(str(folder))
    # PEFT's keys: relative to the PeftModel (`base_model.model.` + the VLM's names, adapter name dropped).
    state = {f"base_model.model.{k}": v for k, v in get_peft_model_state_dict(vlm, adapter_name="default").items()}
    for name, tensor in vlm.state_dict().items():
        if name.split(".", 1)[0] in projector:
            state[f"base_model.model.{name}"] = tensor
    save_file(
        {k: v.detach().contiguous() for k, v in state.items()},
        folder / "adapter_model.safetensors",
        metadata={"format": "pt"},
    )


def list_files(folder: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Every file under `folder` as `(relative path, size in bytes)`, sorted: what `upload_folder` sends."""
    folder = Path(folder)
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def export_checkpoint(
    ckpt: str | os.PathLike[str],
    out: str | os.PathLike[str],
    merge: bool = True,
    overwrite: bool = False,
    base_model: str | None = None,
    model_path: str | None = None,
    name: str | None = None,
) -> Path:
    """Export a training run's checkpoint as a Hugging Face model folder (see the module docstring).

    Args:
        ckpt: a training run folder, a `.ckpt` file of one, or a DeepSpeed checkpoint folder of one.
        out: the folder to write (must be missing or empty, unless `overwrite`).
        merge: merge LoRA into the weights (True) or save it as a PEFT adapter (False).
        overwrite: replace a non-empty `out`.
        base_model: how the adapter config and the model card name the base model (a hub id); None: the run's
            model path (a hub cache snapshot folder is named by its repo id).
        model_path: load the base model from here instead of the run's `model.path` (e.g. the run's folder moved).
        name: how the model card names the model (the Hub repo id when pushing); None: the folder name.

    Returns:
        The written folder.

    Raises:
        ExportError: listing every invalid setting (before anything is loaded).
        UserInputError: a checkpoint that does not fit, a run without LoRA under `merge=false`, deepspeed missing.
    """
    source, problems = check_export(ckpt, out, overwrite=overwrite, merge=merge, model_path=model_path)
    if problems:
        raise ExportError(problems)
    out = Path(out).expanduser().resolve()
    run_cfg = OmegaConf.load(source.config)
    model_cfg = OmegaConf.create(OmegaConf.to_container(run_cfg.model, resolve=True))
    if model_path is not None:
        model_cfg.path = model_path
    reduction = instantiate(run_cfg.reduction)
    metrics = _read_json(source.run_dir / "metrics.json")
    if metrics and (metrics.get("schedule"), metrics.get("keep"), metrics.get("scorer")) != (
        reduction.schedule,
        reduction.keep,
        reduction.scorer,
    ):
        log.warning("%s and %s disagree on the reduction; using config.yaml", source.config, source.run_dir)
    base_source = resolve_model_path(str(model_cfg.path))
    base_ref = base_model or _base_reference(base_source)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".consolidated-") as scratch:
            checkpoint = source.checkpoint
            if source.deepspeed:
                checkpoint = consolidate_deepspeed(checkpoint, Path(scratch) / "consolidated.ckpt")
            step = _checkpoint_step(checkpoint)
            # Unmerged first: the adapter is what merge=false saves, and its size goes into the card.
            vlm, tokenizer = load_trained(model_cfg, checkpoint, source.config, merge=False)
        lora_modules = lora_module_names(vlm)
        lora = None
        if lora_modules:
            peft_config = vlm.peft_config["default"]
            lora = {"r": peft_config.r, "alpha": peft_config.lora_alpha, "modules": len(lora_modules)}
        if merge:
            merge_lora(vlm)
            vlm.save_pretrained(tmp)
        elif not lora_modules:
            raise UserInputError(
                f"ckpt={ckpt}: the run has no LoRA adapter (a full finetune, peft=none); export it with merge=true"
            )
        else:
            _write_adapter(vlm, tmp, base_ref)
        tokenizer.save_pretrained(tmp)
        folder = _base_folder(base_source)
        for file in PROCESSOR_FILES:
            if folder is not None and (folder / file).is_file() and not (tmp / file).exists():
                shutil.copy2(folder / file, tmp / file)
        (tmp / REDUCTION_FILE).write_text(json.dumps(reduction.as_dict(), indent=2, sort_keys=True) + "\n")
        if metrics and step is not None and metrics.get("global_step") not in (None, step):
            log.warning(
                "metrics.json was measured at step %s, the exported checkpoint is step %s",
                metrics.get("global_step"),
                step,
            )
        card = model_card(
            name=name or out.name,
            base_model=base_ref,
            merged=merge,
            reduction=reduction.as_dict(),
            lora=lora,
            run=source.run_dir.name,
            step=step,
            metrics=metrics,
            results=find_results(source.run_dir),
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if out.exists():  # checked: empty, or overwrite=true
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (%s) to %s", source.checkpoint, "merged" if merge else "adapter", out)
    return out


# --------------------------------------------------------------------------------------------- the Hub


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    private: bool = True,
    commit_message: str | None = None,
    dry_run: bool = False,
) -> list[tuple[str, int]]:
    """Upload an exported folder to a Hub model repo (created when missing), or only list it (`dry_run`).

    The token is whatever `huggingface_hub` finds (`HF_TOKEN`, or the login cache); hpft never reads or prints it.

    Args:
        folder: the exported folder.
        repo_id: `<user or org>/<name>`.
        private: visibility of a repo that is created (an existing repo keeps its own).
        commit_message: the Hub commit message; None: a default naming the folder.
        dry_run: list the files, call nothing on the Hub.

    Returns:
        The files (relative path, bytes) uploaded, or that would be.

    Raises:
        UserInputError: when the Hub refuses (authentication, permissions), with its message.
    """
    files = list_files(folder)
    if dry_run:
        return files
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=commit_message or f"Upload {Path(folder).name} (hpft export)",
        )
    except OfflineModeIsEnabled:
        raise UserInputError(f"push_to={repo_id}: HF_HUB_OFFLINE is set; unset it to upload") from None
    except HfHubHTTPError as err:  # authentication, permissions, quota: the Hub's message says which
        raise UserInputError(f"push_to={repo_id}: the Hub refused the upload: {err}") from None
    return files


def _format_files(files: list[tuple[str, int]]) -> str:
    width = max([len(f"{size:,}") for _, size in files] + [5])
    lines = [f"  {size:>{width},} bytes  {path}" for path, size in files]
    total = sum(size for _, size in files)
    return "\n".join(lines + [f"  {total:>{width},} bytes  total, {len(files)} files"])


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """Run one export from a composed `conf/export.yaml`; returns what was written and where it went.

    Raises:
        ExportError: listing every invalid setting (before anything is loaded).
        UserInputError: a problem found later (checkpoint, Hub).
    """
    get = {key: None if OmegaConf.is_missing(cfg, key) else cfg.get(key) for key in ("ckpt", "out")}
    push_to = cfg.get("push_to")
    _, problems = check_export(
        get["ckpt"], get["out"], push_to, cfg.overwrite, cfg.dry_run, cfg.merge, cfg.get("model_path")
    )
    if problems:
        raise ExportError(problems)
    if push_to is not None and cfg.get("base_model") is None and not cfg.merge:
        log.warning(
            "the adapter config names the base model by the run's model.path; pass base_model=<hub id> so "
            "that others can load it from the Hub"
        )
    out = export_checkpoint(
        get["ckpt"],
        get["out"],
        merge=cfg.merge,
        overwrite=cfg.overwrite,
        base_model=cfg.get("base_model"),
        model_path=cfg.get("model_path"),
        name=push_to,
    )
    files = list_files(out)
    print(f"\nexported {'merged model' if cfg.merge else 'adapter'} to {out}:\n{_format_files(files)}", flush=True)
    if push_to is None:
        return {"out": str(out), "files": files, "pushed": None}
    push_folder(out, push_to, private=bool(cfg.private), commit_message=cfg.get("commit_message"), dry_run=cfg.dry_run)
    if cfg.dry_run:
        print(f"dry run: the {len(files)} files above would be uploaded to {push_to}; nothing was uploaded", flush=True)
        return {"out": str(out), "files": files, "pushed": None}
    print(f"uploaded to https://huggingface.co/{push_to}", flush=True)
    return {"out": str(out), "files": files, "pushed": push_to}


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
@exits_on_user_error
def main(cfg: DictConfig) -> Any:
    """Hydra task: `run_export(cfg)`; a settings or input error prints one message and exits with code 2."""
    return run_export(cfg)["out"]


if __name__ == "__main__":
    run(main)
