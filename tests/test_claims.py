"""The claims suite (`hpft.claims`, `hpft.claims_report`, `scripts/run_claims.py`) and the EVS baseline (`hpft.evs`)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from hpft import claims, claims_report, evs
from hpft.config_builders import REPO_ROOT
from hpft.config_checks import check_budget, check_config
from hpft.evaluate import EvalConfigError, check_eval_config, evaluate
from hpft.evaluation import option_logliks
from hpft.reduction import SCHEDULES, SCORERS, ReductionConfig

CONF = REPO_ROOT / "conf"
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "needle_tiny" / "test"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TRANSFORMERS_VERBOSITY": "error",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
PNG = b"\x89PNG"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny model is fastest on one thread, and a second core is usually busy with another job.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_config():
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(REPO_ROOT / "data" / "tiny-omni", local_files_only=True)


@pytest.fixture(scope="module")
def vlm():
    from hpft.models.loading import load_vlm

    model, tokenizer = load_vlm("tiny-omni")
    return model.requires_grad_(False), tokenizer


def _eval_cfg(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "eval",
            overrides=[f"paths.output_dir={out}", f"benchmark.root={FIXTURE}", "logger=none", "progress=false",
                       *overrides],
        )  # fmt: skip


# ------------------------------------------------------------------------------------------- aggregation


def _record(claim, setting, seed, acc, speedup=1.5, realised=0.25, order=0):
    return {"claim": claim, "setting": setting, "seed": seed, "acc": acc, "speedup": speedup,
            "realised_keep": realised, "prefill_s": 0.01, "order": order}  # fmt: skip


RECORDS = [
    _record("schedule", "low_to_high", 0, 0.60, order=0),
    _record("schedule", "low_to_high", 1, 0.70, order=0),
    _record("schedule", "low_to_high", 2, 0.80, order=0),
    _record("schedule", "uniform", 0, 0.55, speedup=1.2, order=1),
    _record("schedule", "uniform", 1, 0.66, speedup=1.4, order=1),
    _record("schedule", "uniform", 2, None, speedup=None, order=1),  # a run that measured nothing
    _record("schedule", "unreduced", 0, 0.9, speedup=1.0, realised=1.0, order=2),
    _record("budget", "0.5", 0, 0.75, order=1),
    _record("budget", "1.0", 0, 0.8, speedup=1.0, realised=1.0, order=2),
    _record("budget", "0.1", 0, 0.3, speedup=2.0, realised=0.1, order=0),
]


def test_stats_mean_sample_std_and_count():
    assert claims_report.stats([0.6, 0.7, 0.8]) == pytest.approx({"mean": 0.7, "std": 0.1, "n": 3})
    assert claims_report.stats([0.5, None, float("nan"), True]) == {"mean": 0.5, "std": None, "n": 1}
    assert claims_report.stats([]) == {"mean": None, "std": None, "n": 0}


def test_aggregate_groups_by_claim_and_setting_in_order():
    summary = claims_report.aggregate(RECORDS)
    assert list(summary) == ["schedule", "budget"]  # the claims' own order
    schedule = summary["schedule"]
    assert schedule["reference"] == "low_to_high" and schedule["axis"] == "schedule"
    assert [r["setting"] for r in schedule["rows"]] == ["low_to_high", "uniform", "unreduced"]
    method, uniform, unreduced = schedule["rows"]
    assert method["n"] == 3 and method["seeds"] == [0, 1, 2]
    assert method["acc"] == pytest.approx({"mean": 0.7, "std": 0.1, "n": 3})
    assert method["delta"] is None  # the reference itself
    assert uniform["acc"]["n"] == 2 and uniform["speedup"] == pytest.approx({"mean": 1.3, "std": 2**0.5 / 10, "n": 2})
    # paired per seed: (0.55 - 0.6, 0.66 - 0.7); seed 2 has no accuracy
    assert uniform["delta"] == pytest.approx({"mean": -0.045, "std": 0.00707, "n": 2}, abs=1e-4)
    assert unreduced["delta"] == pytest.approx({"mean": 0.3, "std": None, "n": 1})
    assert uniform["per_seed"]["1"]["acc"] == 0.66
    assert [r["setting"] for r in summary["budget"]["rows"]] == ["0.1", "0.5", "1.0"]


def test_aggregate_counts_a_repeated_seed_once():
    summary = claims_report.aggregate([_record("evs", "evs", 0, 0.1), _record("evs", "evs", 0, 0.5)])
    (row,) = summary["evs"]["rows"]
    assert row["n"] == 1 and row["acc"]["mean"] == 0.5


def test_markdown_table_shows_mean_std_and_paired_delta():
    summary = claims_report.aggregate(RECORDS)
    table = claims_report.claim_table(summary["schedule"])
    lines = table.splitlines()
    assert lines[0] == (
        "| schedule | accuracy | Δ acc vs low_to_high | colour+shape acc | seeds | prefill speedup | realised keep |"
    )
    # The records carry no per-kind accuracy: that cell is blank, never an error.
    assert lines[2] == "| **low_to_high** | 0.700 ± 0.100 | (reference) |  | 3 | 1.50× ± 0.00 | 0.250 ± 0.000 |"
    assert lines[3].startswith("| uniform | 0.605 ± 0.078 | -0.045 ± 0.007 |  | 3 | 1.30× ± 0.14 |")
    assert claims_report.mean_std(None) == "" and claims_report.mean_std({"mean": 0.5, "std": None}) == "0.500"


def test_write_report_files(tmp_path):
    files = claims_report.write_report(RECORDS, tmp_path, {"seeds": [0, 1, 2], "items": 6})
    assert {"schedule", "budget", "budget_pareto", "json", "markdown"} <= set(files)
    for name in ("schedule.png", "budget.png", "budget_pareto.png"):
        assert (tmp_path / name).read_bytes()[:4] == PNG
    data = json.loads((tmp_path / "claims.json").read_text())
    assert data["meta"]["items"] == 6 and len(data["records"]) == len(RECORDS)
    row = data["claims"]["schedule"]["rows"][0]
    assert {"setting", "n", "acc", "delta", "speedup", "realised_keep", "per_seed"} <= set(row)
    markdown = (tmp_path / "claims.md").read_text()
    assert "## schedule:" in markdown and "![budget](budget_pareto.png)" in markdown and "- items: `6`" in markdown


def test_pareto_plot_without_speedups_still_writes(tmp_path):
    records = [_record("budget", "0.5", 0, 0.7, speedup=None)]
    path = claims_report.plot_budget_pareto(claims_report.aggregate(records), tmp_path / "p.png")
    assert path.read_bytes()[:4] == PNG
    assert claims_report.plot_budget_pareto({}, tmp_path / "none.png") is None


# ------------------------------------------------------------------------------------------- configs

EXPECTED = {
    "schedule": {"schedule": {"low_to_high", "uniform", "high_to_low", "one_shot", "step"}},
    "scorer": {"scorer": {"unified", "unified_decay", "norm", "mean_pool", "random"}},
    "placement": {"scorer": {"attention_only", "mamba_only", "unified"}},
    "budget": {"keep": {"0.1", "0.25", "0.5", "1.0"}},
    "evs": {"evs_point": {"unreduced", "evs", "in_decoder"}},
}


def _header(name: str) -> list[str]:
    return (CONF / "experiment" / f"claims_{name}.yaml").read_text().splitlines()


@pytest.mark.parametrize("claim", sorted(EXPECTED))
def test_training_free_claim_configs_compose_and_fit_the_budget(claim, tiny_config, tmp_path):
    header = _header(claim)
    assert header[0] == "# @package _global_"
    assert any(line.startswith(f"#   python -m hpft.evaluate -m experiment=claims_{claim}") for line in header)
    cfg = claims.compose_eval([f"paths.output_dir={tmp_path}", f"experiment=claims_{claim}"], hydra=True)
    params = cfg.hydra.sweeper.params
    assert {k: {v.strip() for v in str(vals).split(",")} for k, vals in params.items()} == EXPECTED[claim]
    assert cfg.hydra.sweep.dir.startswith(f"multirun/claims/{claim}/")
    realised = {}
    for point in claims.sweep_points(params):
        job = claims.compose_eval([f"paths.output_dir={tmp_path}", f"experiment=claims_{claim}", *point])
        reduction, spec, problems = check_eval_config(job)
        assert problems == [], point
        assert reduction.schedule in SCHEDULES and reduction.scorer in SCORERS
        assert check_budget(reduction, tiny_config, 32) == [], point  # the suite's 32-frame test videos
        rate = job.video_pruning_rate
        realised[claims.point_label(point)] = (1 - rate) if rate else reduction.keep if reduction.active else 1.0
    if claim in ("schedule", "scorer", "placement"):
        assert set(realised.values()) == {0.25}  # one budget per comparison
    if claim == "evs":
        assert realised == {"unreduced": 1.0, "evs": 0.25, "in_decoder": 0.25}


def test_finetune_claim_config_composes_for_training(tmp_path):
    assert "#   python -m hpft.train -m experiment=claims_finetune data.num_frames=32" in _header("finetune")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}", "experiment=claims_finetune"],
                      return_hydra_config=True)  # fmt: skip
        params = cfg.hydra.sweeper.params
        assert {k: set(str(v).split(",")) for k, v in params.items()} == {
            "schedule": {"low_to_high", "none"}, "seed": {"0", "1", "2"}}  # fmt: skip
        for point in claims.sweep_points(params):
            job = compose("train", overrides=[f"paths.output_dir={tmp_path}", "experiment=claims_finetune", *point])
            assert check_config(job)[1] == [] and job.keep == 0.25


# ------------------------------------------------------------------------------------------- plan


def test_plan_shares_runs_and_adds_references(tmp_path):
    data = claims.DataSpec(items=7, frames=16)
    assert data.overrides(2) == ["benchmark.synthetic.frames=16", "benchmark.synthetic.num_videos=3",
                                 "benchmark.synthetic.seed=1002", "max_items=7"]  # fmt: skip
    plan = claims.plan_suite(["schedule", "scorer", "budget", "evs", "finetune"], [0], data, tmp_path)
    by = {(r.claim, r.label): r for r in plan.evals}
    method = by[("schedule", "low_to_high")].folder
    # low_to_high at keep 0.25 with the unified scorer: one run for four claims
    assert method == by[("scorer", "unified")].folder == by[("budget", "0.25")].folder
    assert method == by[("evs", "in_decoder")].folder == by[("finetune", "training-free → keep 0.25")].folder
    reference = by[("schedule", "unreduced")].folder
    assert by[("budget", "1.0")].folder == by[("evs", "unreduced")].folder == reference
    assert ("budget", "unreduced") not in by and ("evs", "unreduced") in by  # only claims lacking one get it
    assert all(r.reference == reference for r in plan.evals if r.needs is None)
    assert "unreduced" in reference.name and reference.parent == tmp_path.resolve() / "runs"
    evs_run = by[("evs", "evs")]
    assert "evs0.75" in evs_run.folder.name and evs_run.folder != reference
    assert "scorer.seed=0" in by[("scorer", "random")].overrides
    assert not any("scorer.seed" in o for o in by[("scorer", "norm")].overrides)
    assert len({r.folder for r in plan.unique_evals}) == len(plan.unique_evals)
    assert plan.unique_evals[0].folder == reference  # the speedup reference first
    # finetuning: two trainings per seed, each evaluated reduced and unreduced against its own unreduced run
    assert [t.label for t in plan.trainings] == ["ft reduced", "ft unreduced"]
    reduced = plan.trainings[0]
    assert {"schedule=low_to_high", "seed=0", "data.num_frames=16", "logger=csv"} <= set(reduced.overrides)
    ft_eval = by[("finetune", "ft reduced → keep 0.25")]
    assert ft_eval.needs == reduced and f"ckpt={reduced.folder}" in ft_eval.overrides
    assert ft_eval.reference == by[("finetune", "ft reduced → unreduced")].folder
    with pytest.raises(ValueError, match="unknown claim"):
        claims.plan_suite(["speed"], [0], data, tmp_path)


def test_collect_computes_speedup_against_the_reference(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    for folder, prefill, acc in ((ref, 0.04, 0.8), (run, 0.01, 0.6)):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({"acc": acc, "prefill_s": prefill, "realised_keep": 0.25}))
    missing = tmp_path / "missing"
    plan = claims.Plan(evals=[
        claims.EvalRun("budget", "0.25", 0, (), run, ref), claims.EvalRun("budget", "1.0", 0, (), ref, ref),
        claims.EvalRun("budget", "0.1", 0, (), missing, ref), claims.EvalRun("evs", "evs", 0, (), run, missing),
    ])  # fmt: skip
    records = {(r["claim"], r["setting"]): r for r in claims.collect(plan)}
    assert set(records) == {("budget", "0.25"), ("budget", "1.0"), ("evs", "evs")}
    assert records[("budget", "0.25")]["speedup"] == pytest.approx(4.0)
    assert records[("budget", "1.0")]["speedup"] == 1.0 and records[("budget", "1.0")]["order"] == 1
    assert records[("evs", "evs")]["speedup"] is None  # its reference has not run


# ------------------------------------------------------------------------------------------- EVS


def test_check_evs():
    assert evs.check_evs(0.0, True) == [] and evs.check_evs(0.75, False) == []
    assert "[0, 1)" in evs.check_evs(1.0, False)[0] and "[0, 1)" in evs.check_evs("x", False)[0]
    assert "cannot be combined" in evs.check_evs(0.5, True)[0]


def _option_batch(vlm, frames: int = 8):
    from hpft.data.prompts import encode_example, option_token_ids

    model, tokenizer = vlm
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, frames // 2, 6, 64, 64, generator=generator)
    num_visual = frames // 2 * 16
    options = ["red", "green", "blue", "yellow"]
    prompt = encode_example(tokenizer, "what colour is the star?", options, num_visual, answer=None,
                            video_token_id=model.config.image_token_id)  # fmt: skip
    return {
        "input_ids": torch.tensor([prompt.input_ids]),
        "query_mask": torch.tensor([prompt.query_mask]),
        "pixel_values_videos": pixels,
        "candidates": [option_token_ids(tokenizer, options)],
    }


def test_evs_option_logliks_match_transformers_forward_per_option(vlm):
    model, _ = vlm
    batch = _option_batch(vlm)
    evs.set_video_pruning_rate(model, 0.75)
    try:
        loglik, realised = evs.evs_option_logliks(model, batch)
        assert realised == 0.25  # 64 visual tokens -> 16, in every decoder block
        prompt = batch["input_ids"][0, : int(torch.where(batch["query_mask"][0])[0].max()) + 1]
        for k, option in enumerate(batch["candidates"][0]):
            ids = torch.cat([prompt, torch.tensor(option)])[None]
            with torch.no_grad():  # the oracle: the model's own forward, pixels in, one row at a time
                logits = model(input_ids=ids, pixel_values_videos=batch["pixel_values_videos"]).logits[0]
            logprobs = torch.log_softmax(logits[-len(option) - 1 : -1].float(), -1)
            expected = logprobs.gather(-1, torch.tensor(option)[:, None]).sum()
            assert loglik[0, k].item() == pytest.approx(expected.item(), abs=1e-4)
    finally:
        evs.set_video_pruning_rate(model, 0.0)


def test_evs_off_equals_the_engine_unreduced(vlm):
    model, _ = vlm
    batch = _option_batch(vlm)
    native, realised = evs.evs_option_logliks(model, batch)
    engine, _ = option_logliks(model, batch, ReductionConfig(schedule="none"))
    assert realised == 1.0 and torch.allclose(native, engine, atol=1e-4)


def test_set_video_pruning_rate_validates(vlm):
    model, _ = vlm
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        evs.set_video_pruning_rate(model, 1.5)
    with pytest.raises(ValueError, match="no video_pruning_rate"):
        evs.set_video_pruning_rate(torch.nn.Linear(1, 1), 0.5)


@pytest.mark.parametrize("mode", [("logits", "option_text"), ("generate", "letter")], ids=["option_text", "generate"])
def test_evaluate_runs_the_evs_baseline(tmp_path, mode):
    cfg = _eval_cfg(tmp_path, "schedule=none", "video_pruning_rate=0.75", f"benchmark.mode={mode[0]}",
                    f"benchmark.variant={mode[1]}", "max_items=3")  # fmt: skip
    results = evaluate(cfg)
    assert results["video_pruning_rate"] == 0.75 and results["realised_keep"] == 0.25  # 128 -> 32 visual tokens
    assert results["n_scored"] == 3 and 0 <= results["acc"] <= 1 and results["prefill_s"] > 0
    items = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert all(r["realised_keep"] == 0.25 for r in items)
    assert json.loads((tmp_path / "settings.json").read_text())["video_pruning_rate"] == 0.75


def test_evs_with_an_active_reduction_is_a_config_error(tmp_path):
    with pytest.raises(EvalConfigError, match="cannot be combined"):
        evaluate(_eval_cfg(tmp_path, "video_pruning_rate=0.75", "keep=0.25"))
    with pytest.raises(EvalConfigError, match=r"\[0, 1\)"):
        evaluate(_eval_cfg(tmp_path, "schedule=none", "video_pruning_rate=1.0"))


# ------------------------------------------------------------------------------------------- end to end


def _run_script(*args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "run_claims.py"), *args],
        capture_output=True, text=True, env={**ENV, "HPFT_CACHE": str(cache)}, cwd=REPO_ROOT, timeout=600,
    )  # fmt: skip


def test_run_claims_end_to_end_and_resume(tmp_path):
    out = tmp_path / "claims"
    args = ("--claims", "evs", "--seeds", "0", "--items", "3", "--frames", "8", "--out", str(out), "--skip-finetune")
    run = _run_script(*args, cache=tmp_path / "cache")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads((out / "claims.json").read_text())
    rows = {r["setting"]: r for r in data["claims"]["evs"]["rows"]}
    assert list(rows) == ["unreduced", "evs", "in_decoder"]
    assert rows["evs"]["realised_keep"]["mean"] == 0.25 and rows["unreduced"]["speedup"]["mean"] == 1.0
    assert abs(rows["in_decoder"]["realised_keep"]["mean"] - 0.25) <= 0.01
    assert all(r["n"] == 1 and r["acc"]["mean"] is not None for r in rows.values())
    assert (out / "evs.png").read_bytes()[:4] == PNG and "## evs:" in (out / "claims.md").read_text()
    assert len(list((out / "runs").glob("*/results.json"))) == 3
    regenerated = _run_script(*args, "--report-only", cache=tmp_path / "cache")  # keeps the timings of the run
    meta = json.loads((out / "claims.json").read_text())["meta"]
    assert regenerated.returncode == 0 and meta["runs_executed"] == 3 and "--report-only" not in meta["command"]
    assert "--report-only" in meta["report_regenerated_by"]
    again = _run_script(*args, cache=tmp_path / "cache")  # resumes: every run is done
    assert again.returncode == 0 and "3 training-free evaluations, 3 already done" in again.stdout
    assert json.loads((out / "claims.json").read_text())["meta"]["runs_executed"] == 0


def test_run_claims_rejects_an_unknown_claim(tmp_path):
    run = _run_script("--claims", "speed", "--out", str(tmp_path), cache=tmp_path)
    assert run.returncode == 2 and "unknown claim" in run.stderr


@pytest.mark.slow
def test_run_claims_finetune_end_to_end(tmp_path):
    out = tmp_path / "claims"
    args = ("--claims", "finetune", "--seeds", "0", "--items", "3", "--frames", "8", "--out", str(out),
            "--train-steps", "2")  # fmt: skip
    run = _run_script(*args, cache=tmp_path / "cache")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {r["setting"]: r for r in json.loads((out / "claims.json").read_text())["claims"]["finetune"]["rows"]}
    assert set(rows) == {f"{t} → {e}" for t in ("training-free", "ft reduced", "ft unreduced")
                         for e in ("keep 0.25", "unreduced")}  # fmt: skip
    assert all(r["n"] == 1 and r["acc"]["mean"] is not None for r in rows.values())
    assert (out / "train" / "ft_reduced-f8-seed0" / "metrics.json").is_file()


def test_kind_accuracy_is_count_weighted_over_the_asked_kinds():
    results = {"by": {"kind": {"colour": 1.0, "shape": 0.5, "quarter": 0.0}},
               "counts": {"kind": {"colour": 10, "shape": 30, "quarter": 60}}}  # fmt: skip
    assert claims.kind_accuracy(results, claims.OBJECT_KINDS) == pytest.approx((10 + 15) / 40)
    assert claims.kind_accuracy(results, ("quarter",)) == 0.0
    assert claims.kind_accuracy({"acc": 0.5}, claims.OBJECT_KINDS) is None


def _run_claims_module():
    spec = importlib.util.spec_from_file_location("run_claims", REPO_ROOT / "scripts" / "run_claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jobs_deal_seeds_and_children_get_their_own_seeds():
    run_claims = _run_claims_module()
    assert run_claims.split_seeds([0, 1, 2], 2) == [[0, 2], [1]]
    assert run_claims.split_seeds([0, 1], 5) == [[0], [1]]
    argv = ["--claims", "evs", "--jobs", "2", "--seeds=0,1", "--items", "3", "--timings-out", "t.json"]
    assert run_claims._without_option(argv, ("--jobs", "--seeds", "--timings-out")) == [
        "--claims",
        "evs",
        "--items",
        "3",
    ]


def test_run_claims_jobs_run_seeds_side_by_side(tmp_path):
    out = tmp_path / "claims"
    args = ("--claims", "evs", "--seeds", "0,1", "--items", "3", "--frames", "8", "--out", str(out), "--skip-finetune",
            "--jobs", "2")  # fmt: skip
    run = _run_script(*args, cache=tmp_path / "cache")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "job 0: seeds [0]" in run.stdout and "job 1: seeds [1]" in run.stdout
    assert "job 1: [3/3] d1001-" in run.stdout  # each job's progress is relayed
    data = json.loads((out / "claims.json").read_text())
    assert all(r["n"] == 2 for r in data["claims"]["evs"]["rows"])
    assert data["meta"]["jobs"] == 2 and data["meta"]["runs_executed"] == 6
    assert "3 training-free evaluations, 0 already done" in (out / "jobs" / "job1.log").read_text()


def test_run_claims_rejects_frames_the_generator_cannot_make(tmp_path):
    run = _run_script("--claims", "evs", "--frames", "12", "--out", str(tmp_path), cache=tmp_path)
    assert run.returncode == 2 and "multiple of 8" in run.stderr and "Traceback" not in run.stderr
