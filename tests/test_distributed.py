"""Multi-process training on CPU: DDP (gloo), DeepSpeed ZeRO-2/3 (DeepSpeed's CPU accelerator), FSDP2.

The slow tests run the real entry point, `python -m hpft.train strategy=… trainer.devices=2`, which starts the
second rank itself, and compare with a single-process run of the same global batch.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hpft.config_builders import REPO_ROOT
from hpft.data.datamodule import ResumableSampler
from hpft.reduction.weights import full_parameters
from hpft.strategies import (
    CPU_NOTICE,
    CPUDeepSpeedStrategy,
    deepspeed_strategy,
    fsdp2_strategy,
    precision_notice,
    wants_cuda,
)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TRANSFORMERS_VERBOSITY": "error"}
# 12 fixture items: 3 steps per epoch at a global batch of 4, the same for one process × 4 and two × 2.
COMMON = ("data=needle_fixture", "logger=csv", "trainer.log_every_n_steps=1", "cpu_threads=1")
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="the `deepspeed` extra is not installed"
)


# ----------------------------------------------------------------------------------------------- fast


@pytest.mark.parametrize("size,world", [(12, 2), (13, 2), (10, 3), (5, 1)])
def test_sharded_order_is_the_single_process_order_in_global_batches(size, world):
    """Step i of a rank-sharded run trains on the samples that step i of one process with batch × world does."""
    batch = 2
    single = list(ResumableSampler(size, seed=3))
    ranks = [list(ResumableSampler(size, seed=3, num_replicas=world, rank=r)) for r in range(world)]
    assert {len(r) for r in ranks} == {-(-size // world)}
    padded = single + single[: len(ranks[0]) * world - size]  # DistributedSampler-style wrap-around
    for step in range(len(ranks[0]) // batch):
        together = sorted(i for r in ranks for i in r[step * batch : (step + 1) * batch])
        assert together == sorted(padded[step * batch * world : (step + 1) * batch * world])


def test_sharded_resume_skips_this_ranks_consumed_samples():
    full = list(ResumableSampler(12, seed=0, num_replicas=2, rank=1))
    resumed = ResumableSampler(12, seed=0, start_epoch=0, skip=4, num_replicas=2, rank=1)
    assert list(resumed) == full[4:]
    assert list(resumed) == full  # the skip applies once


def test_sampler_is_a_distributed_sampler_so_lightning_does_not_rewrap_it():
    assert isinstance(ResumableSampler(4, seed=0), torch.utils.data.DistributedSampler)
    with pytest.raises(ValueError, match="rank=2"):
        ResumableSampler(4, seed=0, num_replicas=2, rank=2)


@needs_deepspeed
def test_deepspeed_builder_picks_cpu_variant_without_cuda(caplog, monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    config = {"zero_optimization": {"stage": 2}}
    strategy = deepspeed_strategy(config, accelerator="cpu")
    assert isinstance(strategy, CPUDeepSpeedStrategy)
    assert os.environ["DS_ACCELERATOR"] == "cpu" and CPU_NOTICE in caplog.text
    assert strategy.config["zero_optimization"]["stage"] == 2
    assert "zero_optimization" in config and "zero_force_ds_cpu_optimizer" not in config  # input not mutated
    assert wants_cuda("gpu") and not wants_cuda("cpu")


@pytest.mark.parametrize("key", ["gradient_accumulation_steps", "bf16"])
def test_deepspeed_builder_refuses_settings_the_trainer_owns(key):
    with pytest.raises(ValueError, match=key):
        deepspeed_strategy({key: 2, "zero_optimization": {"stage": 2}}, accelerator="cpu")


def test_fsdp2_auto_shards_over_every_process():
    assert fsdp2_strategy(devices=4, num_nodes=2)._data_parallel_size == 8
    assert fsdp2_strategy(devices="0,1", num_nodes=1)._data_parallel_size == 2


def test_bf16_on_cpu_gets_a_notice_and_fp32_none():
    from lightning.pytorch import Trainer

    assert "32-true" in precision_notice(Trainer(accelerator="cpu", precision="bf16-mixed", logger=False))
    assert precision_notice(Trainer(accelerator="cpu", precision="32-true", logger=False)) is None


def test_full_parameters_is_a_no_op_without_sharding():
    layer = torch.nn.Linear(3, 2)
    with full_parameters(layer) as inside:
        assert inside is layer and inside.weight.shape == (2, 3)


# ----------------------------------------------------------------------------------------------- slow


def _train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [sys.executable, "-m", "hpft.train", *COMMON, f"hydra.run.dir={run_dir}", *overrides],
        capture_output=True, text=True, env=ENV, cwd=run_dir.parent, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def _losses(run_dir: Path) -> list[float]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    """Ten steps of one process at batch 4, then validation (the reference curve)."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    _train(run_dir, "max_steps=10", "data.batch_size=4", "trainer.val_check_interval=10")
    return run_dir


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(single_process_run, tmp_path):
    run_dir = tmp_path / "ddp"
    _train(run_dir, "max_steps=10", "data.batch_size=2", "trainer.val_check_interval=10", "strategy=ddp",
           "trainer.devices=2")  # fmt: skip
    single, ddp = _losses(single_process_run), _losses(run_dir)
    assert len(single) == len(ddp) == 10
    assert max(abs(a - b) for a, b in zip(single, ddp, strict=True)) <= 1e-3, (single, ddp)
    # Validation metrics are reduced across ranks: the same numbers as one process over the whole split.
    ref, got = (json.loads((d / "metrics.json").read_text()) for d in (single_process_run, run_dir))
    for key in ("val/needle/acc", "val/needle/acc_full", "val/loss"):
        assert got[key] == pytest.approx(ref[key], abs=1e-4), key
    # Only rank 0 writes: one metrics file, one CSV log, one checkpoint.
    assert sorted(p.name for p in run_dir.glob("**/metrics.json")) == ["metrics.json"]
    assert len(list(run_dir.glob("csv/**/metrics.csv"))) == 1
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_process(single_process_run, tmp_path):
    run_dir = tmp_path / "fsdp2"
    _train(run_dir, "max_steps=4", "data.batch_size=2", "trainer.val_check_interval=4", "strategy=fsdp2",
           "trainer.devices=2", "callbacks.model_checkpoint=null")  # fmt: skip
    single, sharded = _losses(single_process_run)[:4], _losses(run_dir)
    assert max(abs(a - b) for a, b in zip(single, sharded, strict=True)) <= 1e-3, (single, sharded)


@pytest.mark.slow
@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_cpu_trains_checkpoints_consolidates_and_exports(single_process_run, tmp_path, stage):
    from hpft.export import consolidate_deepspeed

    run_dir = tmp_path / f"zero{stage}"
    run = _train(run_dir, "max_steps=3", "data.batch_size=2", "trainer.val_check_interval=3",
                 f"strategy=deepspeed_zero{stage}", "trainer.devices=2")  # fmt: skip
    assert CPU_NOTICE in run.stdout + run.stderr
    # LoRA and reduction active: the same losses as one process (ZeRO shards state, not the math).
    single, zero = _losses(single_process_run)[:3], _losses(run_dir)
    assert max(abs(a - b) for a, b in zip(single, zero, strict=True)) <= 1e-3, (single, zero)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["reduction/realised_keep"] == pytest.approx(0.25, abs=0.01)

    shards = run_dir / "checkpoints" / "last.ckpt"
    assert shards.is_dir() and any(shards.glob("*/*zero_pp_rank_1_*"))
    state = torch.load(consolidate_deepspeed(shards, tmp_path / "fp32.ckpt"), weights_only=False)["state_dict"]
    lora_b = {k: v for k, v in state.items() if "lora_B" in k}
    assert lora_b and all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert all(v.numel() > 0 for v in state.values())  # no ZeRO-3 size-0 placeholders
    assert any(v.abs().sum() > 0 for v in lora_b.values())  # LoRA B starts at zero: it trained

    out = tmp_path / "export"
    subprocess.run(
        [sys.executable, "-m", "hpft.export", f"ckpt={run_dir}", f"out={out}", "merge=false"],
        check=True, capture_output=True, env=ENV, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    adapter = load_file(out / "adapter_model.safetensors")
    exported_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert len(exported_b) == len(lora_b) and all(v.numel() > 0 for v in adapter.values())
    trained = float(sum(v.detach().abs().sum() for v in lora_b.values()))
    assert float(sum(v.abs().sum() for v in exported_b)) == pytest.approx(trained, rel=1e-6)


@pytest.mark.slow
@needs_deepspeed
def test_zero3_run_resumes_from_its_sharded_checkpoint(tmp_path):
    run_dir = tmp_path / "zero3"
    quick = ("data.batch_size=2", "strategy=deepspeed_zero3", "trainer.devices=2", "+trainer.limit_val_batches=0")
    _train(run_dir, "max_steps=2", *quick)
    run = _train(run_dir, "max_steps=3", "ckpt_path=last", *quick)
    assert "Restored all states from the checkpoint" in run.stdout + run.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 3


def test_repository_root_has_the_strategy_options():
    names = {p.stem for p in (REPO_ROOT / "conf" / "strategy").glob("*.yaml")}
    expected = {"auto", "ddp", "ddp_spawn", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload", "fsdp2"}
    assert expected <= names
