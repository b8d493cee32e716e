"""`python -m hpft.evaluate`, the eval runner, checkpoint loading and the in-training benchmark callback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hpft import eval_runner
from hpft.callbacks import BenchmarkEvalCallback
from hpft.checkpoints import HF_FOLDER, LIGHTNING_FILE, RUN_FOLDER, checkpoint_kind, load_for_eval
from hpft.config_builders import REPO_ROOT
from hpft.errors import UserInputError
from hpft.eval_runner import RESULT_KEYS, BenchmarkSpec, ItemLog, letter_token_ids, metric_dict
from hpft.evaluate import check_eval_config, evaluate

CONF = REPO_ROOT / "conf"
BENCHMARKS = sorted(p.stem for p in (CONF / "benchmark").glob("*.yaml"))
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "needle_tiny" / "test"
N_FIXTURE = 6  # 2 videos x 3 questions
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TRANSFORMERS_VERBOSITY": "error"}
MODEL_CFG = {"_target_": "hpft.models.loading.load_vlm", "path": str(REPO_ROOT / "data" / "tiny-omni")}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny model is fastest on one thread, and a second core is usually busy with another job.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _eval_cfg(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "eval",
            overrides=[f"paths.output_dir={out}", f"benchmark.root={FIXTURE}", "logger=none", "progress=false",
                       *overrides],
        )  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_config_composes(tmp_path, name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=[f"paths.output_dir={tmp_path}", f"benchmark={name}"])
    spec = instantiate(cfg.benchmark)
    assert isinstance(spec, BenchmarkSpec) and spec.name == name
    module = spec.benchmark_module()  # the module exists and exposes load/build_prompt/parse_answer/aggregate
    assert module.__name__ == spec.module
    expected = {"needle": ("logits", "option_text", "native")}.get(name, ("generate", "letter", "benchmark"))
    assert (spec.mode, spec.variant, spec.prompt_style) == expected
    assert spec.max_new_tokens == (32 if name == "longvideobench" else 16)
    if name != "needle":  # real releases need a root; the needle split is generated when it has none
        with pytest.raises(UserInputError, match="benchmark.root is not set"):
            spec.resolve_root()


def test_default_benchmark_is_the_generated_needle_split(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=[f"paths.output_dir={tmp_path}"])
    assert cfg.benchmark.name == "needle" and cfg.benchmark.root is None
    assert cfg.model.path == str(REPO_ROOT / "data" / "tiny-omni")
    # varied lengths (frame range) and needles in every quarter: the V-NIAH grid has rows and columns
    assert list(cfg.benchmark.synthetic.frames) == [16, 64] and cfg.benchmark.num_frames is None


def test_spec_reports_every_bad_field():
    with pytest.raises(ValueError) as err:
        BenchmarkSpec(name="x", module="hpft.benchmarks.needle", mode="sample", variant="word", num_frames=0)
    assert all(k in str(err.value) for k in ("benchmark.mode", "benchmark.variant", "benchmark.num_frames"))


# ------------------------------------------------------------------------------------------- entry point


@pytest.mark.parametrize(
    "mode", [("logits", "option_text"), ("generate", "letter")], ids=["logits-option_text", "generate"]
)
def test_entry_point_writes_results(tmp_path, mode):
    cfg = _eval_cfg(tmp_path, f"benchmark.mode={mode[0]}", f"benchmark.variant={mode[1]}", "keep=0.25")
    results = evaluate(cfg)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == results
    assert set(RESULT_KEYS) <= set(written)
    assert (written["benchmark"], written["n_total"], written["n_scored"], written["n_skipped"]) == ("needle", 6, 6, 0)
    assert 0 <= written["acc"] <= 1 and written["num_frames"] is None and written["frames_per_item"] == 16
    assert written["tokens_per_frame"] == 8  # 16 tokens per 2-frame tubelet
    assert (written["schedule"], written["keep"]) == ("low_to_high", 0.25)
    assert abs(written["realised_keep"] - 0.25) <= 0.01  # the engine solves the budget on the block pattern
    assert written["prefill_s"] > 0
    assert {"kind", "depth_percent", "num_frames"} <= set(written["by"])
    items = _lines(tmp_path / "items.jsonl")
    assert len(items) == N_FIXTURE and all(r["num_frames"] == 16 and r["tokens_per_frame"] == 8 for r in items)
    if mode[0] == "generate":
        assert all(isinstance(r["output"], str) for r in items)
        assert written["n_unparsed"] == sum(r["pred"] == "" for r in items)
    else:
        assert written["n_unparsed"] == 0 and all(len(r["scores"]) == 4 for r in items)
    # the needle benchmark's V-NIAH grid: heatmap and table
    assert (tmp_path / "niah.png").stat().st_size > 0
    grid = json.loads((tmp_path / "niah.json").read_text())
    assert grid["lengths"] == [16] and len(grid["accuracy"]) == len(grid["depths"])
    assert (tmp_path / "config.yaml").is_file()


@pytest.mark.parametrize("frame_labels", [False, True])
def test_option_text_matches_the_training_validation_path(tmp_path, frame_labels):
    """The runner's native option-text scores equal `score_options` on the training collator's batch (both prompt
    layouts: a model trained with frame labels is evaluated with them)."""
    from hpft.data.datamodule import NeedleDataModule
    from hpft.evaluation import option_logliks
    from hpft.models.loading import load_vlm
    from hpft.models.processor import FRAME_LABELS_KEY
    from hpft.reduction import ReductionConfig

    vlm, tokenizer = load_vlm(MODEL_CFG["path"])
    setattr(vlm.config, FRAME_LABELS_KEY, frame_labels)
    reduction = ReductionConfig("low_to_high", 0.5)
    spec = BenchmarkSpec(
        name="needle", module="hpft.benchmarks.needle", root=str(FIXTURE), num_frames=16, variant="option_text",
        prompt_style="native",
    )  # fmt: skip
    results = eval_runner.evaluate_benchmark(vlm, tokenizer, spec, reduction, out_dir=tmp_path, progress=False)
    runner = {r["id"]: r["scores"] for r in _lines(tmp_path / "items.jsonl")}
    dm = NeedleDataModule(data_dir=str(FIXTURE.parent), val_split="test", num_frames=16, batch_size=N_FIXTURE)
    batch = next(iter(dm.bind(tokenizer=tokenizer, model_config=vlm.config).val_dataloader()))
    assert (" Frame 3:" in tokenizer.decode(batch["input_ids"][0])) == frame_labels
    loglik, realised = option_logliks(vlm, batch, reduction)
    for i, item_id in enumerate(batch["id"]):
        torch.testing.assert_close(torch.tensor(runner[item_id]), loglik[i], rtol=1e-4, atol=1e-4)
    assert results["realised_keep"] == pytest.approx(realised, abs=1e-6)


def test_letter_variant_scores_the_option_letters():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_CFG["path"])
    table = letter_token_ids(tokenizer, "ABCD")
    spellings = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (" A", "A")]
    assert table[0] == [ids[0] for ids in spellings if len(ids) == 1]
    assert len({tuple(ids) for ids in table}) == 4


@pytest.fixture(scope="module")
def tiny_vlm():
    from hpft.models.loading import load_vlm

    return load_vlm(MODEL_CFG["path"])


def _egoschema_root(root: Path) -> Path:
    """A 3-question EgoSchema subset (5 options, answers as indices) whose videos are the fixture's mp4s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    options = [
        f"{letter}. c was {verb}." for letter, verb in zip("ABCDE", ("cleaning", "sorting", "red", "ring", "plus"))
    ]
    rows = [
        {"question_idx": str(i), "question": f"What did c do {i}?", "video_idx": f"vid{i % 2}", "option": options,
         "answer": str(i + 2)}
        for i in range(3)
    ]  # fmt: skip
    schema = pa.schema([("question_idx", pa.string()), ("question", pa.string()), ("video_idx", pa.string()),
                        ("option", pa.list_(pa.string())), ("answer", pa.string())])  # fmt: skip
    (root / "Subset").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "Subset" / "test-00000-of-00001.parquet")
    (root / "videos").mkdir()
    for i in range(2):
        shutil.copy(FIXTURE / "videos" / f"test-0000{i}.mp4", root / "videos" / f"vid{i}.mp4")
    return root


def test_five_option_benchmark_with_reference_guess(tmp_path, tiny_vlm):
    """EgoSchema: 5 options, the benchmark prompt, generation, and the reference's seeded guess."""
    from hpft.reduction import ReductionConfig

    vlm, tokenizer = tiny_vlm
    root = _egoschema_root(tmp_path / "egoschema")
    spec = BenchmarkSpec(
        name="egoschema", module="hpft.benchmarks.egoschema", root=str(root), num_frames=8, mode="generate",
        max_new_tokens=4,
    )  # fmt: skip
    results = eval_runner.evaluate_benchmark(
        vlm, tokenizer, spec, ReductionConfig("uniform", 0.5), out_dir=tmp_path / "out", progress=False
    )
    assert (results["n_scored"], results["n_total"], results["frames_per_item"]) == (3, 3, 8)
    items = _lines(tmp_path / "out" / "items.jsonl")
    assert all(r["num_options"] == 5 and isinstance(r["output"], str) for r in items)
    # the reference guesses where it parses nothing: every unparsed item is guessed
    assert results["n_guessed"] == results["n_unparsed"] == sum(r["pred"] == "" for r in items)
    assert results["units"] == "fraction" and results["acc"] == results["reference_score"]
    item = eval_runner.load_items(spec)[0][0]
    for bad, match in (({"prompt_style": "native"}, "prompt_style=native"), ({"mode": "logits"}, "letter 'E'")):
        wrong = BenchmarkSpec(**{**spec.as_dict(), **bad})
        with pytest.raises(UserInputError, match=match):  # tiny-omni's vocabulary has no "E"
            eval_runner.score_item(vlm, tokenizer, item, wrong, spec.benchmark_module(), ReductionConfig("none"))


def test_subtitle_prompt_gets_the_sampled_frames(tmp_path):
    """videomme_sub: only cues covering the sampled frames (the video's fps and length are read for it)."""
    root = tmp_path / "vm"
    shutil.copytree(FIXTURE, root, symlinks=True)
    (root / "subtitle").mkdir()
    # 16 frames at 8 fps = 2 s; one cue inside the video, one after it
    (root / "subtitle" / "test-00000.srt").write_text(
        "1\n00:00:00,000 --> 00:00:01,000\nseen cue\n\n2\n00:00:05,000 --> 00:00:06,000\nlate cue\n"
    )
    spec = BenchmarkSpec(name="videomme_sub", module="hpft.benchmarks.videomme", root=str(root),
                         prompt_kwargs={"subtitles": True})  # fmt: skip
    items, _, _ = eval_runner.load_items(spec)
    text = eval_runner._prompt_text(spec.benchmark_module(), items[0], spec)
    assert "seen cue" in text and "late cue" not in text and text.endswith("The best answer is:")


def test_benchmark_prompt_follows_the_model_layout():
    from transformers import AutoTokenizer

    from hpft.data.prompts import FrameLabels

    tokenizer = AutoTokenizer.from_pretrained(MODEL_CFG["path"])
    item = types.SimpleNamespace(id="x", options=["red", "blue", "green", "white"])
    plain, plain_query, _ = eval_runner._benchmark_prompt(tokenizer, item, "What colour?", 32, 4, None)
    ids, query, _ = eval_runner._benchmark_prompt(tokenizer, item, "What colour?", 32, 4, FrameLabels(16))
    assert ids.count(4) == plain.count(4) == 32 and sum(query) == sum(plain_query)
    assert tokenizer.decode(ids[: ids.index(4)]).endswith("Frame 1:") and query[-1] and not any(query[: ids.index(4)])
    assert ids[len(ids) - sum(query) :] == plain[len(plain) - sum(plain_query) :]


def test_frames_are_resized_to_the_model_size():
    frames = torch.zeros(2, 96, 80, 3, dtype=torch.uint8)
    frames[:, :48] = 200
    out = eval_runner._resize(frames, 64)
    assert out.shape == (2, 64, 64, 3) and out.dtype == torch.uint8
    assert int(out[0, 0, 0, 0]) == 200 and int(out[0, -1, 0, 0]) == 0


def test_resume_skips_scored_items(tmp_path, monkeypatch):
    first = evaluate(_eval_cfg(tmp_path, "max_items=2", "benchmark.variant=letter"))
    assert (first["n_scored"], first["n_total"]) == (2, 2)
    before = (tmp_path / "items.jsonl").read_bytes()
    with open(tmp_path / "items.jsonl", "ab") as f:  # a run killed while writing its third line
        f.write(b'{"id": "test-00000-q2", "pred"')
    calls = []
    original = eval_runner.score_item
    monkeypatch.setattr(eval_runner, "score_item", lambda *a, **k: calls.append(a[2].id) or original(*a, **k))
    final = evaluate(_eval_cfg(tmp_path, "benchmark.variant=letter"))
    assert len(calls) == N_FIXTURE - 2  # only the items not in items.jsonl were scored
    items = _lines(tmp_path / "items.jsonl")
    assert (tmp_path / "items.jsonl").read_bytes().startswith(before)
    assert len(items) == len({r["id"] for r in items}) == N_FIXTURE
    assert (final["n_scored"], final["n_total"], final["n_skipped"]) == (N_FIXTURE, N_FIXTURE, 0)
    # another setting into the same folder would mix records: refused
    with pytest.raises(UserInputError, match="another setting"):
        evaluate(_eval_cfg(tmp_path, "benchmark.variant=letter", "keep=0.5"))


def test_item_log_drops_a_torn_line(tmp_path):
    log = ItemLog(tmp_path, {"a": 1})
    log.append({"id": "x", "pred": "A"})
    with open(log.path, "a") as f:
        f.write('{"id": "y", "pr')
    again = ItemLog(tmp_path, {"a": 1})
    assert list(again.records) == ["x"] and log.path.read_text().count("\n") == 1


def test_metric_dict_keys():
    results = {"benchmark": "b", "acc": 0.5, "by": {"duration": {"short": 1.0, "long": 0.0}}, "n_unparsed": 1,
               "frames_per_item": 16.0, "tokens_per_frame": 8.0, "realised_keep": 0.25, "prefill_s": 0.1}  # fmt: skip
    assert metric_dict(results) == {
        "val/b/acc": 0.5, "val/b/duration/short": 1.0, "val/b/duration/long": 0.0, "val/b/n_unparsed": 1.0,
        "val/b/frames_per_item": 16.0, "val/b/tokens_per_frame": 8.0, "val/b/realised_keep": 0.25,
        "perf/prefill_s": 0.1,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------- errors


def test_config_problems_are_reported_together(tmp_path):
    cfg = _eval_cfg(tmp_path, "keep=1.5", f"benchmark.root={tmp_path / 'nowhere'}", "ckpt=/no/such/run", "max_items=0")
    _, _, problems = check_eval_config(cfg)
    text = "\n".join(problems)
    assert "keep=1.5 is outside (0, 1]" in text
    assert "benchmark.root=" in text and "nowhere" in text
    assert "ckpt=/no/such/run does not exist" in text
    assert "max_items=0" in text
    _, _, problems = check_eval_config(_eval_cfg(tmp_path, "benchmark.module=hpft.benchmarks.bogus"))
    assert any("benchmark.module=hpft.benchmarks.bogus cannot be imported" in p for p in problems)


def test_missing_video_names_the_file(tmp_path):
    root = tmp_path / "split"
    shutil.copytree(FIXTURE, root, symlinks=True)
    (root / "videos" / "test-00001.mp4").unlink()
    spec = BenchmarkSpec(name="needle", module="hpft.benchmarks.needle", root=str(root), prompt_style="native")
    with pytest.raises(UserInputError, match=r"(?s)3 video file\(s\).*data/test-00001") as err:
        eval_runner.load_items(spec)
    assert "skip_missing_videos=true" in str(err.value)
    spec.skip_missing_videos = True
    items, skipped, _ = eval_runner.load_items(spec)
    assert (len(items), len(skipped)) == (3, 3)


def _run_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpft.evaluate", f"hydra.run.dir={tmp_path}", *args],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("keep=1.5", "benchmark.root=/no/such/folder"), ("keep=1.5 is outside (0, 1]", "/no/such/folder")),
        (("benchmark=bogus",), ("benchmark", "bogus")),
    ],
    ids=["keep-and-root", "unknown-benchmark"],
)
def test_cli_config_errors_exit_2(tmp_path, args, expected):
    proc = _run_cli(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert all(text in proc.stderr for text in expected), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_cli_letter_mode_end_to_end(tmp_path):
    proc = _run_cli(tmp_path, f"benchmark.root={FIXTURE}", "benchmark.variant=letter", "logger=csv", "schedule=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(RESULT_KEYS) <= set(results) and results["n_scored"] == N_FIXTURE
    assert results["schedule"] == "none" and results["realised_keep"] == 1.0
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/needle/acc", "val/needle/kind/colour", "perf/prefill_s"} <= set(header)


# ------------------------------------------------------------------------------------------- training run + ckpt


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """A 2-step LoRA run on the fixture with the needle callback evaluating 2 items after every step."""
    from hpft.train import train

    out = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.output_dir={out}", "data=needle_fixture", "data.batch_size=2", "max_steps=2",
                "eval_full=false", "+trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false", "logger=csv",
                "callbacks=eval_needle", "callbacks.benchmark_eval.every_n_steps=1",
                "callbacks.benchmark_eval.max_items=2", f"callbacks.benchmark_eval.benchmarks.needle.root={FIXTURE}",
                "~callbacks.progress_bar", "optim.scheduler.warmup_steps=0",
            ],
        )  # fmt: skip
    metrics = train(cfg)
    return out, metrics


def test_callback_logs_benchmark_metrics_during_fit(train_run):
    out, metrics = train_run
    assert metrics["val/needle_test/acc"] is not None and "perf/prefill_s" in metrics
    rows = [r for r in (out / "csv" / "metrics.csv").read_text().splitlines()]
    header = rows[0].split(",")
    column = header.index("val/needle_test/acc")
    steps = [r.split(",")[header.index("step")] for r in rows[1:] if r.split(",")[column]]
    assert steps == ["1", "2"]  # every step; not again at the end (step 2 was just evaluated)
    for step in (1, 2):
        results = json.loads((out / "benchmarks" / "needle_test" / f"step-{step}" / "results.json").read_text())
        assert results["n_scored"] == 2 and results["keep"] == 0.25


def test_callback_validates_its_arguments():
    spec = BenchmarkSpec(name="a", module="hpft.benchmarks.needle")
    with pytest.raises(ValueError, match="repeat"):
        BenchmarkEvalCallback([spec, spec])
    with pytest.raises(ValueError, match="every_n_steps"):
        BenchmarkEvalCallback({"x": OmegaConf.to_container(OmegaConf.structured(spec))}, every_n_steps=0)


def _q_proj(vlm) -> torch.Tensor:
    return vlm.language_model.model.layers[1].mixer.q_proj.weight.detach()


def test_checkpoint_forms_load(train_run, tmp_path):
    out, _ = train_run
    ckpt = out / "checkpoints" / "last.ckpt"
    assert checkpoint_kind(out) == RUN_FOLDER and checkpoint_kind(ckpt) == LIGHTNING_FILE
    base, _ = load_for_eval(MODEL_CFG)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    prefix = "model.language_model.model.layers.1.mixer.q_proj."
    lora_a, lora_b = state[prefix + "lora_A.default.weight"], state[prefix + "lora_B.default.weight"]
    expected = _q_proj(base) + (16 / 8) * lora_b @ lora_a  # the run's alpha / r
    assert not torch.equal(expected, _q_proj(base))
    for source in (out, ckpt):
        vlm, tokenizer = load_for_eval(MODEL_CFG, source)
        assert not any("lora" in name for name, _ in vlm.named_parameters())  # merged
        torch.testing.assert_close(_q_proj(vlm), expected)
        projector = dict(vlm.named_parameters())["multi_modal_projector.linear_1.weight"]
        torch.testing.assert_close(projector, state["model.multi_modal_projector.linear_1.weight"])
    # an exported HF folder is the model itself
    export = tmp_path / "export"
    vlm.save_pretrained(export)
    tokenizer.save_pretrained(export)
    assert checkpoint_kind(export) == HF_FOLDER
    loaded, _ = load_for_eval(MODEL_CFG, export)
    torch.testing.assert_close(_q_proj(loaded), expected)
    # a .ckpt without its run's config.yaml cannot place the LoRA weights
    lone = tmp_path / "lone" / "x.ckpt"
    lone.parent.mkdir()
    shutil.copy(ckpt, lone)
    with pytest.raises(UserInputError, match="config.yaml"):
        load_for_eval(MODEL_CFG, lone)
    with pytest.raises(UserInputError, match="folder without config.json"):
        load_for_eval(MODEL_CFG, tmp_path)


def test_entry_point_with_a_run_folder(train_run, tmp_path):
    out, _ = train_run
    results = evaluate(_eval_cfg(tmp_path, f"ckpt={out}", "max_items=1"))
    assert results["ckpt"] == str(out.resolve()) and results["n_scored"] == 1
