"""`python -m hpft.export`: merged and adapter folders, reduction.json, model card, Hub push, DeepSpeed input."""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from hpft import eval_runner
from hpft import export as export_module
from hpft.checkpoints import combine_reduction, load_for_eval, overridden_reduction_parts
from hpft.config_builders import REPO_ROOT
from hpft.errors import UserInputError
from hpft.evaluate import check_eval_config, evaluate
from hpft.export import (
    ExportError,
    export_checkpoint,
    find_results,
    is_deepspeed_checkpoint,
    list_files,
    locate_run,
)
from hpft.model_card import format_value, model_card
from hpft.models.loading import load_reduction_settings
from hpft.reduction import ReductionConfig

CONF = REPO_ROOT / "conf"
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "needle_tiny" / "test"
TINY = REPO_ROOT / "data" / "tiny-omni"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TRANSFORMERS_VERBOSITY": "error",
       "OMP_NUM_THREADS": "1"}  # fmt: skip
# Not the defaults of conf/eval.yaml (low_to_high, 0.25, unified): an evaluation of the export that matches the
# run without naming them on the command line proves that reduction.json was applied.
TRAINED = ("schedule=uniform", "keep=0.5", "scorer=norm")
MAX_ITEMS = 3
TOKEN = "hf_exportTestSecret0123456789"
# runpy re-executes hpft.export as __main__ (as `python -m` does) while the test module imported it already.
pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules.*:RuntimeWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is fastest on one thread; the other core is often busy
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-step LoRA run under a non-default reduction, with the needle callback writing results.json each step."""
    from hpft.train import train

    out = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.output_dir={out}", "data=needle_fixture", "data.batch_size=2", "max_steps=2", *TRAINED,
                "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
                "callbacks=eval_needle", "callbacks.benchmark_eval.every_n_steps=1",
                "callbacks.benchmark_eval.max_items=2", f"callbacks.benchmark_eval.benchmarks.needle.root={FIXTURE}",
                "~callbacks.progress_bar", "~callbacks.lr_monitor", "optim.scheduler.warmup_steps=0",
            ],
        )  # fmt: skip
    train(cfg)
    return out


@pytest.fixture(scope="module")
def merged(run, tmp_path_factory) -> Path:
    return export_checkpoint(run, tmp_path_factory.mktemp("exports") / "merged")


@pytest.fixture(scope="module")
def adapter(run, tmp_path_factory) -> Path:
    return export_checkpoint(run, tmp_path_factory.mktemp("exports") / "adapter", merge=False)


def _eval_cfg(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "eval",
            overrides=[f"paths.output_dir={out}", f"benchmark.root={FIXTURE}", "logger=none", "progress=false",
                       f"max_items={MAX_ITEMS}", "time_prefill=false", *overrides],
        )  # fmt: skip


def _items(folder: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (folder / "items.jsonl").read_text().splitlines())}


def _batch(tokenizer, config):
    from hpft.data.datamodule import NeedleDataModule

    dm = NeedleDataModule(data_dir=str(FIXTURE.parent), val_split="test", num_frames=16, batch_size=2)
    batch = next(iter(dm.bind(tokenizer=tokenizer, model_config=config).val_dataloader()))
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values_videos")}


# ------------------------------------------------------------------------------------------- the folders


def test_merged_folder_loads_with_plain_transformers(run, merged):
    from transformers import AutoModelForImageTextToText

    names = {path for path, _ in list_files(merged)}
    assert {"config.json", "model.safetensors", "tokenizer.json", "video_preprocessor_config.json", "reduction.json",
            "README.md"} <= names  # fmt: skip
    assert (merged / "video_preprocessor_config.json").read_bytes() == (
        TINY / "video_preprocessor_config.json"
    ).read_bytes()
    plain = AutoModelForImageTextToText.from_pretrained(merged)
    trained, _ = load_for_eval({"_target_": "hpft.models.loading.load_vlm", "path": str(TINY)}, run)
    assert not any("lora" in name for name, _ in plain.named_parameters())
    own = dict(trained.named_parameters())
    for name, param in plain.named_parameters():
        torch.testing.assert_close(param, own[name], rtol=0, atol=0, msg=name)


def test_exported_folder_scores_like_the_run(run, merged, adapter, tmp_path):
    """Before export (run folder, reduction named) == after (exported folders, reduction from reduction.json)."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    before = evaluate(_eval_cfg(tmp_path / "before", f"ckpt={run}", *TRAINED), overrides=[f"ckpt={run}", *TRAINED])
    reference = _items(tmp_path / "before")
    assert (before["schedule"], before["keep"], before["scorer"]) == ("uniform", 0.5, "norm")
    for name, folder in (("merged", merged), ("adapter", adapter)):
        after = evaluate(_eval_cfg(tmp_path / name, f"ckpt={folder}"), overrides=[f"ckpt={folder}"])
        assert after["reduction"] == before["reduction"] and after["reduction_from"] == str(folder / "reduction.json")
        assert after["acc"] == before["acc"] and after["n_scored"] == MAX_ITEMS
        items = _items(tmp_path / name)
        assert {i: r["pred"] for i, r in items.items()} == {i: r["pred"] for i, r in reference.items()}
        for item_id, record in items.items():
            torch.testing.assert_close(torch.tensor(record["scores"]), torch.tensor(reference[item_id]["scores"]),
                                       rtol=1e-4, atol=1e-4)  # fmt: skip
    # plain transformers load + the runner under the folder's own settings: the same choices
    vlm = AutoModelForImageTextToText.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    spec = instantiate(_eval_cfg(tmp_path).benchmark)
    plain = eval_runner.evaluate_benchmark(
        vlm, tokenizer, spec, load_reduction_settings(merged), max_items=MAX_ITEMS, progress=False, time_prefill=False
    )
    assert plain["acc"] == before["acc"] and plain["reduction"] == before["reduction"]


def test_adapter_loads_with_peft_and_matches_the_merged_logits(merged, adapter):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(TINY) and config["modules_to_save"] == ["multi_modal_projector"]
    assert not (adapter / "config.json").exists() and (adapter / "adapter_model.safetensors").is_file()
    reference = AutoModelForImageTextToText.from_pretrained(merged).eval()
    with_peft = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(TINY), adapter).eval()
    with_transformers = AutoModelForImageTextToText.from_pretrained(adapter).eval()  # base named in the config
    inputs = _batch(AutoTokenizer.from_pretrained(adapter), reference.config)
    with torch.no_grad():
        expected = reference(**inputs).logits
        base = AutoModelForImageTextToText.from_pretrained(TINY).eval()(**inputs).logits
        assert not torch.allclose(base, expected, atol=1e-3)  # the training changed the model
        for model in (with_peft, with_transformers):
            # Merged W + BA and the adapter's W x + B(A x) round differently in float32, in proportion to the
            # logits' size (|logits| up to ~10 here): a relative term as well as an absolute one.
            torch.testing.assert_close(model(**inputs).logits, expected, rtol=1e-4, atol=1e-4)


def test_full_finetune_has_no_adapter_to_keep(run, tmp_path, monkeypatch):
    from hpft.models.loading import load_vlm

    monkeypatch.setattr(export_module, "load_trained", lambda *args, **kwargs: load_vlm(TINY))  # no LoRA inside
    with pytest.raises(UserInputError, match="no LoRA adapter.*merge=true"):
        export_checkpoint(run, tmp_path / "out", merge=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


# ------------------------------------------------------------------------------------------- reduction settings


def test_reduction_json_round_trips(run, merged, tmp_path):
    trained = instantiate(OmegaConf.load(run / "config.yaml").reduction)
    stored = json.loads((merged / "reduction.json").read_text())
    assert ReductionConfig(**stored).as_dict() == stored == trained.as_dict()
    assert load_reduction_settings(merged) == ReductionConfig(**stored)
    assert load_reduction_settings(TINY) is None  # a base model folder has none
    bad = tmp_path / "bad"
    shutil.copytree(merged, bad)
    (bad / "reduction.json").write_text(json.dumps({**stored, "keep": 2}))
    with pytest.raises(UserInputError, match=r"(?s)reduction.json does not hold valid reduction settings.*keep=2"):
        load_reduction_settings(bad)


def test_command_line_parts_override_the_exported_reduction(merged, tmp_path):
    def reduction(*overrides):
        cfg = _eval_cfg(tmp_path, f"ckpt={merged}", *overrides)
        value, _, problems = check_eval_config(cfg, overrides=[f"ckpt={merged}", *overrides])
        assert problems == []
        return value.schedule, value.keep, value.scorer

    assert reduction() == ("uniform", 0.5, "norm")
    assert reduction("keep=0.75") == ("uniform", 0.75, "norm")
    assert reduction("schedule=one_shot", "scorer=unified") == ("one_shot", 0.5, "unified")
    assert reduction("reduction_from_ckpt=false") == ("low_to_high", 0.25, "unified")  # conf/eval.yaml's own
    # composed with the Hydra node (as the entry point is), the overrides are read from it
    cfg = _eval_cfg(tmp_path, f"ckpt={merged}", "keep=0.75")
    with open_dict(cfg):
        cfg.hydra = {"overrides": {"task": [f"ckpt={merged}", "keep=0.75"]}}
    assert check_eval_config(cfg)[0].keep == 0.75


def test_reduction_parts_are_pure_functions():
    assert overridden_reduction_parts(
        ["ckpt=x", "keep=0.5", "schedule.p=3", "+scorer.seed=1", "model.path=m", "hydra.run.dir=d", "max_items=2"]
    ) == {"keep", "schedule", "scorer"}
    assert overridden_reduction_parts(["reduction.min_tokens=4", "~schedule"]) == {"min_tokens", "schedule"}
    exported = ReductionConfig("uniform", 0.5, "random", min_tokens=2, seed=7)
    configured = ReductionConfig("low_to_high", 0.25, "unified_decay", p=3.0)
    assert combine_reduction(configured, exported, set()) == exported
    assert combine_reduction(configured, exported, {"keep"}).as_dict() == {**exported.as_dict(), "keep": 0.25}
    mixed = combine_reduction(configured, exported, {"schedule", "scorer"})
    assert (mixed.schedule, mixed.schedule_params, mixed.keep, mixed.scorer, mixed.decay, mixed.min_tokens) == (
        "low_to_high", {"p": 3.0}, 0.5, "unified_decay", True, 2
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- model card


def test_model_card_holds_the_runs_measured_numbers(run, merged, adapter):
    metrics = json.loads((run / "metrics.json").read_text())
    results = json.loads((run / "benchmarks" / "needle_test" / "step-2" / "results.json").read_text())
    for folder in (merged, adapter):
        card = (folder / "README.md").read_text()
        for key in ("val/needle/acc", "val/needle/acc_full", "perf/prefill_speedup", "train/loss"):
            assert f"| `{key}` | {format_value(metrics[key])} |" in card
        assert "`benchmarks/needle_test/step-2/results.json`" in card and "step-1" not in card  # latest step only
        assert f"| {format_value(results['acc'])} | {results['n_scored']} |" in card
        assert "| `schedule` | uniform |" in card and "| `keep` | 0.5 |" in card and "| `scorer` | norm |" in card
    assert "library_name: transformers" in (merged / "README.md").read_text()
    assert "library_name: peft" in (adapter / "README.md").read_text()
    assert [name for name, _ in find_results(run)] == ["benchmarks/needle_test/step-2/results.json"]


def test_model_card_without_measurements_invents_none():
    card = model_card(name="alice/x", base_model="org/base", merged=True, reduction={"schedule": "none"})
    measured = card.split("## Measured scores", 1)[1].split("## Usage", 1)[0]
    assert "No scores were measured" in measured and not re.search(r"\d", measured)
    assert "base_model: org/base" in card
    local = model_card(name="x", base_model="/models/base", merged=False, reduction={})
    assert "base_model:" not in local.split("---", 2)[1]  # the Hub accepts only repo ids there
    earlier = model_card(name="x", base_model="b", merged=True, reduction={}, step=5,
                         metrics={"global_step": 10, "val/needle/acc": 0.5})  # fmt: skip
    assert "measured at step 10; this export is the checkpoint of step 5" in earlier


# ------------------------------------------------------------------------------------------- CLI, push, errors


def _main(monkeypatch, *args: str) -> None:
    """`python -m hpft.export *args` in this process (so that the Hub client can be faked)."""
    monkeypatch.setattr(sys, "argv", ["hpft.export", *args])
    try:
        runpy.run_module("hpft.export", run_name="__main__")
    finally:
        GlobalHydra.instance().clear()


class FakeHfApi:
    """Records the calls an upload makes; nothing goes over the network."""

    calls: list[tuple[str, tuple, dict]] = []

    def __init__(self, *args, **kwargs):
        FakeHfApi.calls.append(("__init__", args, kwargs))

    def create_repo(self, *args, **kwargs):
        FakeHfApi.calls.append(("create_repo", args, kwargs))
        return f"https://huggingface.co/{args[0] if args else kwargs['repo_id']}"

    def upload_folder(self, *args, **kwargs):
        FakeHfApi.calls.append(("upload_folder", args, kwargs))


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)  # Hydra's run dir is `.`: nothing may land there
    return FakeHfApi.calls


def test_dry_run_lists_the_files_and_uploads_nothing(run, tmp_path, monkeypatch, capfd, fake_hub):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier export")
    _main(monkeypatch, f"ckpt={run}", f"out={out}", "push_to=alice/omni-needle", "dry_run=true", "overwrite=true")
    printed = capfd.readouterr().out
    assert fake_hub == []  # not even a client
    assert not (out / "stale.txt").exists()  # overwrite replaced the folder as a whole
    files = list_files(out)
    assert {"model.safetensors", "reduction.json", "README.md"} <= {path for path, _ in files}
    for path, size in files:
        assert re.search(rf"{size:,} bytes  {re.escape(path)}\n", printed), path
    assert "nothing was uploaded" in printed


def test_push_uploads_the_folder_and_never_prints_the_token(run, tmp_path, monkeypatch, capfd, fake_hub):
    out = tmp_path / "out"
    _main(monkeypatch, f"ckpt={run}", f"out={out}", "push_to=alice/omni-needle", "merge=false")
    captured = capfd.readouterr()
    calls = {name: kwargs for name, _, kwargs in fake_hub}
    create = next(args for name, args, _ in fake_hub if name == "create_repo")
    assert create == ("alice/omni-needle",) and calls["create_repo"]["exist_ok"] is True
    assert calls["create_repo"]["private"] is True
    assert calls["upload_folder"]["repo_id"] == "alice/omni-needle"
    assert Path(calls["upload_folder"]["folder_path"]) == out and "token" not in calls["upload_folder"]
    assert "token" not in calls["__init__"] and "https://huggingface.co/alice/omni-needle" in captured.out
    assert TOKEN not in captured.out + captured.err
    assert all(TOKEN not in (out / path).read_bytes().decode("latin-1") for path, _ in list_files(out))
    assert "# omni-needle" in (out / "README.md").read_text()  # the card names the repo


def test_push_without_a_token_is_a_settings_error(run, tmp_path, monkeypatch, capsys, fake_hub):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(SystemExit) as exit_:
        _main(monkeypatch, f"ckpt={run}", f"out={tmp_path / 'out'}", "push_to=alice/omni-needle")
    assert exit_.value.code == 2 and "HF_TOKEN" in capsys.readouterr().err
    assert fake_hub == [] and not (tmp_path / "out").exists()


def test_missing_keys_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        _main(monkeypatch)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "cannot export (2 problems)" in err
    assert "ckpt is required" in err and "out is required" in err
    assert list(tmp_path.iterdir()) == []  # no Hydra run folder, no log file


def test_cli_reports_every_problem_at_once(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("keep me")
    inside = run / "export"
    proc = subprocess.run(
        [sys.executable, "-m", "hpft.export", f"ckpt={tmp_path / 'nowhere'}", f"out={out}", "push_to=alice"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert "cannot export (3 problems)" in proc.stderr
    assert "nowhere does not exist" in proc.stderr
    assert "exists and is not empty; pass overwrite=true" in proc.stderr
    assert "push_to='alice' must be a Hub repo id" in proc.stderr
    assert (out / "x").read_text() == "keep me"
    _, problems = export_module.check_export(run, run.parent, overwrite=True)
    assert any("holds the training run" in p for p in problems)  # overwrite never deletes the run itself
    _, problems = export_module.check_export(run, inside, push_to="alice/b--c", dry_run=True)
    assert len(problems) == 1 and "push_to" in problems[0]
    with pytest.raises(ExportError, match="is an exported model folder already"):
        export_checkpoint(REPO_ROOT / "data" / "tiny-omni", tmp_path / "again")


# ------------------------------------------------------------------------------------------- DeepSpeed


def _deepspeed_run(run: Path, root: Path) -> Path:
    """A run folder whose last.ckpt is a (fake) DeepSpeed ZeRO checkpoint folder, as Lightning lays it out."""
    root.mkdir()
    shutil.copy(run / "config.yaml", root / "config.yaml")
    ds = root / "checkpoints" / "last.ckpt"
    (ds / "checkpoint").mkdir(parents=True)
    (ds / "latest").write_text("checkpoint")
    (ds / "checkpoint" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"")
    (ds / "checkpoint" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    return root


def test_deepspeed_checkpoint_is_detected_and_needs_the_extra(run, tmp_path, monkeypatch):
    """Detection and the missing-extra error only: consolidating real shards needs deepspeed (GPU tier)."""
    root = _deepspeed_run(run, tmp_path / "ds_run")
    ds = root / "checkpoints" / "last.ckpt"
    assert is_deepspeed_checkpoint(ds) and is_deepspeed_checkpoint(ds / "checkpoint")
    assert not is_deepspeed_checkpoint(run) and not is_deepspeed_checkpoint(run / "checkpoints" / "last.ckpt")
    for ckpt in (root, ds):
        source = locate_run(ckpt)
        assert source.deepspeed and source.checkpoint == ds and source.config == root / "config.yaml"
    assert not locate_run(run).deepspeed
    monkeypatch.setattr(export_module, "_deepspeed_available", lambda: False)
    with pytest.raises(UserInputError, match=r"DeepSpeed \(ZeRO\) checkpoint.*deepspeed.*\.\[deepspeed\]"):
        export_checkpoint(root, tmp_path / "exports" / "out")
    assert list((tmp_path / "exports").iterdir()) == []  # nothing half-written, no consolidated file left
