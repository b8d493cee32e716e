"""Sweeps (`python -m hpft.train -m`, launchers, Optuna, experiments) and `python -m hpft.compare`."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hpft import comparison, sweeps
from hpft.compare import main as compare_main
from hpft.config_builders import REPO_ROOT
from hpft.config_checks import check_budget
from hpft.reduction import SCHEDULES, SCORERS
from hpft.run_report import REQUIRED_KEYS

CONF = REPO_ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# Threads: the tests share a small machine with other work; one intra-op thread per process is fastest there.
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TRANSFORMERS_VERBOSITY": "error",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
REQUIRED_COLUMNS = ("run", *REQUIRED_KEYS)
SCHEMA_WARNING = "ignore:\\s+'hydra/launcher/submitit_:UserWarning"  # the schema match conf/hydra/launcher relies on
torch.set_num_threads(1)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_submitit = pytest.mark.skipif(
    not _has("hydra_plugins.hydra_submitit_launcher"), reason="hydra-submitit-launcher not installed (extra: slurm)"
)
needs_optuna = pytest.mark.skipif(
    not _has("hydra_plugins.hydra_optuna_sweeper"), reason="hydra-optuna-sweeper not installed (extra: optuna)"
)


def _compose(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=/tmp/unused", *overrides], return_hydra_config=hydra)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------- the 2x2 multirun


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """`python -m hpft.train -m schedule=low_to_high,uniform keep=0.25,0.5` (basic launcher, one batch each)."""
    root = tmp_path_factory.mktemp("sweep")
    sweep = root / "grid"
    run = subprocess.run(
        [sys.executable, "-m", "hpft.train", "-m", "schedule=low_to_high,uniform", "keep=0.25,0.5",
         "data=needle_fixture", "logger=csv", "debug=fdr", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, env=ENV, cwd=root, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return sweep


def test_multirun_gives_every_combination_its_own_run_folder(sweep_dir):
    folders = sorted(p.parent for p in sweep_dir.rglob("metrics.json"))
    assert [f.name for f in folders] == ["0", "1", "2", "3"]
    settings = set()
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        settings.add((metrics["schedule"], metrics["keep"], metrics["scorer"]))
        config = OmegaConf.load(folder / "config.yaml")
        assert config.paths.output_dir == str(folder)
        assert config.group == "grid"  # one W&B group per sweep: the sweep folder's name
    assert settings == {(s, k, "unified") for s in ("low_to_high", "uniform") for k in (0.25, 0.5)}


def test_compare_tabulates_the_sweep(sweep_dir, tmp_path):
    out = tmp_path / "report"
    run = subprocess.run(
        [sys.executable, "-m", "hpft.compare", "--runs", str(sweep_dir), "--out", str(out)],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = _read_csv(out / "comparison.csv")
    assert len(rows) == 4
    assert list(rows[0])[:4] == ["run", "schedule", "keep", "scorer"]
    for row in rows:
        for column in REQUIRED_COLUMNS:
            assert row[column] != "", (row["run"], column)
    assert {row["run"] for row in rows} == {f"grid/{i}" for i in range(4)}
    assert "val/needle/acc/colour" in rows[0]  # every val/<bench>/acc* key, breakdowns included
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "comparison.md").read_text()
    assert "| run | schedule | keep | scorer | val/needle/acc | val/needle/acc_full |" in markdown
    assert "grid/3" in run.stdout and "perf/prefill_speedup" in run.stdout  # the table is printed


# ------------------------------------------------------------------------------------------- compare, offline


def _run_folder(root: Path, name: str, metrics: dict | str, config: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    if config is not None:
        (folder / "config.yaml").write_text(config)
    return folder


FULL = {
    "schedule": "low_to_high", "keep": 0.25, "scorer": "unified", "val/needle/acc": 0.75,
    "val/needle/acc_full": 0.8, "perf/prefill_speedup": 3.1, "reduction/realised_keep": 0.25, "train/loss": 0.4,
}  # fmt: skip


def test_missing_metrics_are_blank_cells(tmp_path, capsys):
    runs = tmp_path / "runs"
    _run_folder(runs, "full", FULL)
    _run_folder(runs, "partial", {"schedule": "uniform", "keep": 0.5, "scorer": "norm", "val/needle/acc": 0.5,
                                  "perf/prefill_speedup": None, "train/loss": float("nan")})  # fmt: skip
    # No setting in the metrics: read from the run's resolved config.yaml.
    config = "keep: 0.1\nschedule: {name: one_shot}\nscorer: {name: random}\n"
    _run_folder(runs, "from_config", {"val/mlvu/acc": 0.3}, config)
    _run_folder(runs, "broken", "{not json")
    assert compare_main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "broken" in captured.err
    rows = {row["run"]: row for row in _read_csv(tmp_path / "out" / "comparison.csv")}
    assert set(rows) == {"runs/full", "runs/partial", "runs/from_config"}
    assert rows["runs/partial"]["perf/prefill_speedup"] == "" and rows["runs/partial"]["train/loss"] == ""
    assert rows["runs/partial"]["val/needle/acc_full"] == "" and rows["runs/partial"]["val/mlvu/acc"] == ""
    assert (rows["runs/from_config"]["schedule"], rows["runs/from_config"]["keep"]) == ("one_shot", "0.1")
    assert rows["runs/from_config"]["scorer"] == "random" and rows["runs/from_config"]["val/needle/acc"] == ""
    assert rows["runs/full"]["val/needle/acc"] == "0.75"
    # columns: run, schedule, keep, scorer, val/mlvu/acc, val/needle/acc, val/needle/acc_full, ...
    assert "| runs/partial | uniform | 0.5 | norm |  | 0.5 |  |" in (tmp_path / "out" / "comparison.md").read_text()
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 0


def test_plot_without_any_complete_point_still_writes(tmp_path):
    records = [comparison.make_record("a", {"schedule": "uniform", "keep": 0.5, "scorer": "norm"})]
    files = comparison.write_comparison(records, tmp_path)
    assert files.plot.read_bytes()[:4] == b"\x89PNG"
    (row,) = _read_csv(files.csv)
    assert row["schedule"] == "uniform" and row["perf/prefill_speedup"] == "" and row["train/loss"] == ""


def _eval_folder(root: Path, name: str, results: dict | str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(results if isinstance(results, str) else json.dumps(results))
    return folder


SPLIT = {"benchmark": "needle", "root": "/data/needle-test-1", "num_frames": None, "n_scored": 6,
         "model": "/m/tiny-omni", "ckpt": None}  # fmt: skip


def _results(schedule: str, keep: float, acc: float, prefill_s: float, **extra) -> dict:
    return {**SPLIT, "schedule": schedule, "keep": keep, "scorer": "unified", "acc": acc, "prefill_s": prefill_s,
            "realised_keep": 1.0 if schedule == "none" else keep, "by": {"kind": {"colour": 1.0, "shape": 0.5}},
            **extra}  # fmt: skip


def test_evaluation_runs_become_rows_with_their_unreduced_twin(tmp_path, capsys):
    runs = tmp_path / "runs"
    _eval_folder(runs, "full", _results("none", 0.25, 0.8, 0.04))
    _eval_folder(runs, "l2h", _results("low_to_high", 0.25, 0.7, 0.02))
    _eval_folder(runs, "evs", _results("low_to_high", 1.0, 0.5, 0.01, video_pruning_rate=0.75, realised_keep=0.25))
    # another split: no unreduced twin among the runs, so no speedup and no unreduced accuracy
    _eval_folder(runs, "other", {**_results("uniform", 0.5, 0.6, 0.03), "root": "/data/needle-test-2"})
    _eval_folder(runs, "partial", {"benchmark": "needle", "schedule": "step"})  # an old or partial file
    _eval_folder(runs, "broken", "[1, 2")
    training = _run_folder(runs, "train", FULL)  # a training run, its benchmark callback's results inside it
    _eval_folder(training / "benchmarks" / "needle_test", "step-100", _results("low_to_high", 0.25, 0.1, 0.5))
    assert compare_main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 0
    assert "broken" in capsys.readouterr().err
    rows = {row["run"]: row for row in _read_csv(tmp_path / "out" / "comparison.csv")}
    assert set(rows) == {f"runs/{n}" for n in ("full", "l2h", "evs", "other", "partial", "train")}
    l2h = rows["runs/l2h"]
    assert (l2h["schedule"], l2h["keep"], l2h["scorer"]) == ("low_to_high", "0.25", "unified")
    assert (l2h["val/needle/acc"], l2h["val/needle/acc_full"], l2h["reduction/realised_keep"]) == ("0.7", "0.8", "0.25")
    assert float(l2h["perf/prefill_speedup"]) == pytest.approx(2.0)
    assert (l2h["val/needle/acc/colour"], l2h["val/needle/acc/shape"], l2h["train/loss"]) == ("1.0", "0.5", "")
    assert float(rows["runs/full"]["perf/prefill_speedup"]) == pytest.approx(1.0)
    evs = rows["runs/evs"]
    assert [evs[k] for k in ("schedule", "keep", "scorer", "reduction/realised_keep")] == ["evs", "0.25", "evs", "0.25"]
    assert float(evs["perf/prefill_speedup"]) == pytest.approx(4.0)
    other = rows["runs/other"]
    assert other["val/needle/acc"] == "0.6" and other["perf/prefill_speedup"] == other["val/needle/acc_full"] == ""
    partial = rows["runs/partial"]
    assert partial["schedule"] == "step" and partial["keep"] == partial["val/needle/acc"] == ""
    assert rows["runs/train"]["train/loss"] == "0.4"  # training rows unchanged beside evaluation rows
    assert (tmp_path / "out" / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_a_lone_results_file_or_eval_folder_is_a_run(tmp_path):
    folder = _eval_folder(tmp_path, "eval", _results("none", 0.25, 0.8, 0.04))
    for target in (folder, folder / "results.json"):
        records, warnings = comparison.load_run_folders([target])
        assert warnings == [] and len(records) == 1
        assert records[0]["val/needle/acc"] == 0.8 and records[0]["perf/prefill_speedup"] == 1.0


def test_eval_record_tolerates_missing_and_odd_fields():
    record = comparison.eval_record("x", {"acc": "n/a", "by": [1], "prefill_s": float("nan")})
    (row,) = comparison.attach_unreduced([record])
    assert row["run"] == "x" and row["schedule"] is None and row["val/bench/acc"] is None
    assert "perf/prefill_speedup" not in row and "_eval" not in row


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_runs_dir_exits_2(tmp_path, capsys, make):
    runs = tmp_path / "runs"
    if make == "empty":
        (runs / "sub").mkdir(parents=True)
    assert compare_main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --runs:") and str(runs) in err
    assert ("no such folder" if make == "missing" else "no metrics.json") in err
    assert not (tmp_path / "out").exists()


def test_pareto_front():
    speed = [1.0, 2.0, 3.0, 2.0, float("nan"), 3.0]
    acc = [0.9, 0.8, 0.5, 0.7, 1.0, 0.5]
    # (2.0, 0.7) is beaten by (2.0, 0.8); NaN is never on the front; equal points are both kept.
    assert comparison.pareto_front(speed, acc) == [True, True, True, False, False, True]
    assert comparison.pareto_front([], []) == []


def test_flat_metrics_fold_lightning_suffixes():
    flat = comparison.flat_metrics(
        {"train/loss_step": 1.5, "train/loss_epoch": 2.0, "val/loss_epoch": 3.0, "global_step": 7,
         "_runtime": 4.0, "media": {"_type": "image"}, "val/needle/acc": float("inf")}
    )  # fmt: skip
    assert flat == {"train/loss": 1.5, "val/loss": 3.0, "global_step": 7, "media": None, "val/needle/acc": None}


# ------------------------------------------------------------------------------------------- compare, W&B


class FakeRun:
    def __init__(self, name, summary, config, as_summary_metrics=True):
        self.name, self.id, self.config = name, f"id-{name}", config
        if as_summary_metrics:
            self.summary_metrics = summary
        else:
            self.summary_metrics = None
            self.summary = type("HTTPSummary", (), {"_json_dict": summary})()


class FakeApi:
    calls: list = []

    def __init__(self, runs):
        self._runs = runs

    def runs(self, path, filters=None):
        FakeApi.calls.append((path, filters))
        return iter(self._runs)


def test_wandb_project_with_a_fake_api(tmp_path, monkeypatch, capsys):
    import wandb

    runs = [
        # hpft's own runs: flat summary (metrics.json keys) and flat reduction settings in the config
        FakeRun("l2h", {**FULL, "_step": 12, "_runtime": 30.0}, {"schedule": "low_to_high", "keep": 0.25}),
        # a run without the flat keys: Lightning's suffixed keys, settings only in the nested Hydra config
        FakeRun("old", {"train/loss_step": 1.25, "train/loss_epoch": 2.0, "val/needle/acc": 0.5},
                {"config": {"value": {"schedule": {"name": "uniform"}, "keep": 0.5, "scorer": {"name": "norm"}}}},
                as_summary_metrics=False),
    ]  # fmt: skip
    monkeypatch.setattr(wandb, "Api", lambda *a, **k: FakeApi(runs))
    FakeApi.calls.clear()
    out = tmp_path / "out"
    assert compare_main(["--project", "me/hpft", "--group", "grid", "--out", str(out)]) == 0
    assert FakeApi.calls == [("me/hpft", {"group": "grid"})]
    rows = {row["run"]: row for row in _read_csv(out / "comparison.csv")}
    assert rows["l2h"]["perf/prefill_speedup"] == "3.1" and rows["l2h"]["scorer"] == "unified"
    assert (rows["old"]["schedule"], rows["old"]["keep"], rows["old"]["scorer"]) == ("uniform", "0.5", "norm")
    assert rows["old"]["train/loss"] == "1.25" and rows["old"]["perf/prefill_speedup"] == ""
    assert "_runtime" not in rows["l2h"]
    assert "l2h" in capsys.readouterr().out
    assert (out / "pareto.png").exists()


def test_wandb_errors_exit_2(tmp_path, monkeypatch, capsys):
    import wandb

    def unreachable(*args, **kwargs):
        raise wandb.errors.CommError("no network")

    monkeypatch.setattr(wandb, "Api", unreachable)
    assert compare_main(["--project", "me/hpft", "--out", str(tmp_path)]) == 2
    assert "--project me/hpft: cannot read it from W&B" in capsys.readouterr().err
    monkeypatch.setattr(wandb, "Api", lambda *a, **k: FakeApi([]))
    assert compare_main(["--project", "me/hpft", "--out", str(tmp_path)]) == 2
    assert "no runs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- sweep helpers


def test_release_master_port_only_forgets_a_port_left_by_a_previous_job(monkeypatch):
    monkeypatch.setattr(sweeps, "_USER_MASTER_PORT", None)
    env = {"MASTER_PORT": "29500"}
    assert sweeps.release_master_port(env) and env == {}
    assert not sweeps.release_master_port(env)
    for rank_variable in ("LOCAL_RANK", "SLURM_NTASKS"):  # a rank of someone else's launch keeps its port
        env = {"MASTER_PORT": "29500", rank_variable: "1"}
        assert not sweeps.release_master_port(env) and env["MASTER_PORT"] == "29500"
    monkeypatch.setattr(sweeps, "_USER_MASTER_PORT", "29500")  # exported by the user before the sweep
    env = {"MASTER_PORT": "29500"}
    assert not sweeps.release_master_port(env) and env == {"MASTER_PORT": "29500"}


def test_ddp_popen_is_refused_inside_a_multirun_only(monkeypatch):
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import DDPStrategy

    for name in ("LOCAL_RANK", "RANK", "SLURM_NTASKS", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    popen = Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(start_method="popen"), logger=False)
    (problem,) = sweeps.ddp_launch_problems(popen, multirun=True)
    assert "strategy=ddp_spawn" in problem and "submitit_slurm" in problem and "trainer.devices=2" in problem
    assert sweeps.ddp_launch_problems(popen, multirun=False) == []
    spawn = Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(start_method="spawn"), logger=False)
    assert sweeps.ddp_launch_problems(spawn, multirun=True) == []
    single = Trainer(accelerator="cpu", devices=1, logger=False)
    assert sweeps.ddp_launch_problems(single, multirun=True) == []


def test_publish_summary_writes_the_flat_metrics_into_wandb_runs():
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    summary: dict = {}
    wandb_logger = WandbLogger.__new__(WandbLogger)  # no wandb.init: the run is a stand-in with a summary
    wandb_logger._experiment = type("Run", (), {"summary": summary})()
    sweeps.publish_summary([CSVLogger("/tmp/unused"), wandb_logger], {"val/needle/acc_full": 0.5, "keep": 0.25})
    assert summary == {"val/needle/acc_full": 0.5, "keep": 0.25}
    summary.clear()
    sweeps.publish_summary([wandb_logger], {"keep": 0.25}, is_global_zero=False)
    assert summary == {}


# ------------------------------------------------------------------------------------------- configs


def _sweep_points(params) -> list[list[str]]:
    """The overrides of every job of a basic sweep (`hydra.sweeper.params`: key -> comma-separated values)."""
    axes = [[f"{key}={value.strip()}" for value in str(values).split(",")] for key, values in params.items()]
    return [list(point) for point in itertools.product(*axes)]


EXPECTED_SWEEPS = {
    "schedule_shape": {"schedule": {"low_to_high", "uniform", "high_to_low", "one_shot", "step"}},
    "scorer_ablation": {"scorer": {"unified", "unified_decay", "norm", "mean_pool", "random"}},
    "placement_ablation": {"scorer": {"attention_only", "mamba_only", "unified"}},
    "keep_budget": {"keep": {"0.1", "0.25", "0.5"}},
}


@pytest.fixture(scope="module")
def tiny_config():
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(REPO_ROOT / "data" / "tiny-omni", local_files_only=True)


@pytest.mark.parametrize("experiment", sorted(EXPECTED_SWEEPS))
def test_every_experiment_sweep_point_composes(experiment, tiny_config):
    assert set(EXPECTED_SWEEPS) <= set(EXPERIMENTS)
    header = (CONF / "experiment" / f"{experiment}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_"
    assert f"#   python -m hpft.train -m experiment={experiment}" in header
    cfg = _compose(f"experiment={experiment}", hydra=True)
    params = cfg.hydra.sweeper.params
    assert {k: {v.strip() for v in str(vals).split(",")} for k, vals in params.items()} == EXPECTED_SWEEPS[experiment]
    assert cfg.group and cfg.hydra.sweep.dir.startswith(f"multirun/{experiment}/")
    assert set(params.get("schedule", "").split(",")) <= set(SCHEDULES) | {""}
    assert set(params.get("scorer", "").split(",")) <= set(SCORERS) | {""}
    for point in _sweep_points(params):
        job = _compose(f"experiment={experiment}", *point)
        reduction = instantiate(job.reduction)
        assert check_budget(reduction, tiny_config, job.data.num_frames) == [], point
        assert job.keep == (0.25 if experiment != "keep_budget" else float(point[0].split("=")[1]))


@needs_submitit
@pytest.mark.filterwarnings(SCHEMA_WARNING)
def test_slurm_launcher_config_composes_and_asks_one_task_per_device(tmp_path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    # The file lists every key of the plugin's schema, so it also works once Hydra stops merging the schema in.
    assert set(OmegaConf.load(CONF / "hydra" / "launcher" / "submitit_slurm.yaml")) == set(
        OmegaConf.structured(SlurmQueueConf)
    )
    cfg = _compose("hydra/launcher=submitit_slurm", "trainer.devices=4", "trainer.num_nodes=2",
                   "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}", hydra=True)  # fmt: skip
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"  # Hydra's plugin scan loads its own copy of the class
    assert launcher.params["tasks_per_node"] == launcher.params["gpus_per_node"] == 4
    assert launcher.params["nodes"] == 2 and launcher.params["submitit_folder"] == f"{tmp_path}/.submitit/%j"

    # Submit through the plugin and submitit for real, up to the sbatch script (a stand-in `srun` on PATH).
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    scripts = []

    def map_array(self, fn, *args):
        scripts.append(self._executor._make_submission_file_text("python -m submitit.core._submit x", "uid"))
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    launcher.config = cfg
    assert launcher.launch([["keep=0.25"], ["keep=0.5"]], initial_job_idx=0) == []
    (script,) = scripts
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--time=240",
                 "--cpus-per-task=8", "--mem=64GB"):  # fmt: skip
        assert f"#SBATCH {line}\n" in script, line
    assert "\nsrun " in script


@needs_submitit
@pytest.mark.filterwarnings(SCHEMA_WARNING)
def test_local_launcher_config_lists_every_key():
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf

    assert set(OmegaConf.load(CONF / "hydra" / "launcher" / "submitit_local.yaml")) == set(
        OmegaConf.structured(LocalQueueConf)
    )
    launcher = _compose("hydra/launcher=submitit_local", hydra=True).hydra.launcher
    assert launcher.tasks_per_node == 1 and launcher._target_.endswith("LocalLauncher")


@needs_optuna
def test_optuna_search_composes_and_stays_within_the_budget(tiny_config):
    cfg = _compose("hparams_search=schedule_optuna", hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/needle/acc" and cfg.optimized_metric in REQUIRED_KEYS
    assert cfg.schedule.name == "low_to_high" and cfg.keep == 0.25
    ranges = {key: [float(x) for x in re.fullmatch(r"interval\((.+), (.+)\)", value).groups()]
              for key, value in sweeper.params.items()}  # fmt: skip
    assert set(ranges) == {"schedule.p", "schedule.r_min"}
    for p, r_min in itertools.product(ranges["schedule.p"], ranges["schedule.r_min"]):  # the corners
        job = _compose("hparams_search=schedule_optuna", f"schedule.p={p}", f"schedule.r_min={r_min}")
        assert check_budget(instantiate(job.reduction), tiny_config, job.data.num_frames) == [], (p, r_min)


# ------------------------------------------------------------------------------------------- submitit, local


@needs_submitit
@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_job_multirun(tmp_path):
    sweep = tmp_path / "local"
    run = subprocess.run(
        [sys.executable, "-m", "hpft.train", "-m", "hydra/launcher=submitit_local", "keep=0.25,0.5",
         "data=needle_fixture", "logger=csv", "debug=fdr", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    keeps = sorted(json.loads((sweep / str(i) / "metrics.json").read_text())["keep"] for i in (0, 1))
    assert keeps == [0.25, 0.5]
    assert {OmegaConf.load(sweep / str(i) / "config.yaml").group for i in (0, 1)} == {"local"}
    assert (sweep / ".submitit").is_dir()  # each job ran in its own submitit process
