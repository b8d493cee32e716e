"""`python -m hpft.analyze`: sparsity and stability metrics, the probe, the cut variants, config checks, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import make_prompt
from hydra import compose, initialize_config_dir

from hpft.analysis.checks import check_layer_pattern, check_rows, check_settings
from hpft.analysis.collect import unreduced_block_scores
from hpft.analysis.linear_probe import fit_probe, majority_accuracy
from hpft.analysis.needles import (
    needle_token_index,
    probe_examples,
    probe_prompt,
    recolour_needle,
    split_by_video,
)
from hpft.analysis.probing import (
    centre_per_needle,
    colour_variance_share,
    last_block_states,
    recoloured_needle_features,
)
from hpft.analysis.runner import AnalysisSettings, first_video_rows
from hpft.analysis.sparsity import coverage_fraction, layerwise_sparsity, score_share
from hpft.analysis.stability import average_ranks, pairwise_jaccard, pairwise_spearman, stability_matrices
from hpft.analyze import analyze
from hpft.config_builders import REPO_ROOT
from hpft.data.datamodule import read_question_rows
from hpft.data.prompts import FrameLabels
from hpft.reduction import ReductionConfig
from hpft.reduction.adapters.nemotron_h import NemotronHAdapter

CONF = REPO_ROOT / "conf"
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "needle_tiny" / "test" / "test.jsonl"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TRANSFORMERS_VERBOSITY": "error"}
EXPECTED_PNGS = ("sparsity.png", "stability.png", "stability_adjacent.png", "probing.png")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _settings(**changes) -> AnalysisSettings:
    values = dict(num_videos=2, num_items=None, batch_size=4, masses=(0.5, 0.9), top_fractions=(0.1, 0.25),
                  cut_block=0, train_size=2, test_size=1, seed=0)  # fmt: skip
    values.update(changes)
    return AnalysisSettings(**values)


# ------------------------------------------------------------------------------------------------- sparsity


def test_coverage_fraction_of_a_hand_made_vector():
    scores = torch.tensor([1.0, 4.0, 2.0, 3.0])  # sorted 4, 3, 2, 1 of 10: 7 >= 5 (two tokens), 9 >= 9 (three)
    assert coverage_fraction(scores, 0.5).item() == pytest.approx(0.5)
    assert coverage_fraction(scores, 0.9).item() == pytest.approx(0.75)
    assert coverage_fraction(scores, 1.0).item() == pytest.approx(1.0)


def test_coverage_fraction_extremes_and_empty_rows():
    one_hot = torch.zeros(2, 100)
    one_hot[0, 37] = 5.0
    uniform = torch.ones(1, 100)
    assert coverage_fraction(one_hot[:1], 0.9).item() == pytest.approx(0.01)
    assert coverage_fraction(uniform, 0.5).item() == pytest.approx(0.5)
    assert torch.isnan(coverage_fraction(one_hot[1:], 0.5)).all()  # no mass: no answer, not a fake 1/V
    per_block = layerwise_sparsity(torch.stack([one_hot, torch.ones(2, 100)], dim=1), [0.5])  # (N=2, M=2, V)
    assert per_block[:, 0].tolist() == pytest.approx([0.01, 0.5])  # the empty row is skipped, not averaged in


def test_score_share():
    scores = torch.tensor([[1.0, 1.0, 2.0, 0.0]])
    assert score_share(scores, torch.tensor([[False, False, True, True]])).item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------ stability


def test_jaccard_and_spearman_of_identical_and_reversed_scores():
    ramp = torch.arange(40, dtype=torch.float32)
    scores = torch.stack([ramp, ramp * 3 + 1, ramp.flip(0)])  # same ranking twice, then the reverse
    for k in (4, 10):
        jaccard = pairwise_jaccard(scores, k)
        assert jaccard[0, 1].item() == pytest.approx(1.0) and jaccard[0, 2].item() == pytest.approx(0.0)
    spearman = pairwise_spearman(scores)
    assert spearman[0, 1].item() == pytest.approx(1.0) and spearman[0, 2].item() == pytest.approx(-1.0)
    assert torch.allclose(spearman, spearman.T) and torch.allclose(spearman.diagonal(), torch.ones(3))


def test_jaccard_counts_the_overlap():
    a = torch.tensor([[5.0, 4.0, 3.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 4.0, 3.0, 0.0]])  # top-3 share one token
    assert pairwise_jaccard(a, 3)[0, 1].item() == pytest.approx(1 / 5)


def test_spearman_handles_ties_like_scipy():
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (3, 30), generator=generator).float()  # many ties
    assert average_ranks(torch.tensor([1.0, 2.0, 2.0, 3.0])).tolist() == [0.0, 1.5, 1.5, 3.0]
    ours = pairwise_spearman(scores)
    for i in range(3):
        for j in range(3):
            assert ours[i, j].item() == pytest.approx(stats.spearmanr(scores[i], scores[j]).statistic, abs=1e-5)


def test_stability_matrices_average_items():
    ramp = torch.arange(20, dtype=torch.float32)
    scores = torch.stack([torch.stack([ramp, ramp]), torch.stack([ramp, ramp.flip(0)])])  # (N=2, M=2, V=20)
    out = stability_matrices(scores, [0.1, 0.25])
    assert set(out) == {"jaccard_10", "jaccard_25", "spearman"}
    assert out["spearman"][0, 1].item() == pytest.approx(0.0)  # +1 and -1 averaged
    assert out["jaccard_25"][0, 1].item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------------ probe


def test_probe_is_at_chance_on_random_labels_and_high_on_a_planted_signal():
    generator = torch.Generator().manual_seed(0)
    n, dim, classes = 600, 32, 4
    x = torch.randn(n, dim, generator=generator)
    noise_labels = torch.randint(0, classes, (n,), generator=generator)
    probe = fit_probe(x[:400], noise_labels[:400], classes, steps=200)
    assert abs(probe.accuracy(x[400:], noise_labels[400:]) - 1 / classes) < 0.1

    labels = torch.randint(0, classes, (n,), generator=generator)
    x_signal = x.clone()
    x_signal[:, :classes] += 6.0 * torch.nn.functional.one_hot(labels, classes)  # well separated classes
    probe = fit_probe(x_signal[:400], labels[:400], classes, steps=200)
    assert probe.accuracy(x_signal[400:], labels[400:]) > 0.9


def test_majority_baseline():
    assert majority_accuracy(torch.tensor([2, 2, 1]), torch.tensor([2, 0, 2, 1])) == pytest.approx(0.5)


def test_centring_and_colour_variance_share():
    base = torch.randn(5, 1, 8).expand(5, 4, 8)  # no colour trace: every colour version is the same
    assert centre_per_needle(base).abs().max() < 1e-6 and colour_variance_share(base) < 1e-12
    traced = base + torch.eye(4, 8)[None] * 0.1
    assert 0 < colour_variance_share(traced) < 1


# -------------------------------------------------------------------------------------------------- needles


def test_needle_tokens_follow_cells_and_tubelets():
    needle = {"glyph": "ring", "colour": "red", "cell": [1, 2], "frames": [4, 8]}
    assert needle_token_index(needle, tokens_per_tubelet=16) == [2 * 16 + 6, 3 * 16 + 6]
    with pytest.raises(ValueError, match="outside"):
        needle_token_index({**needle, "cell": [4, 0]}, tokens_per_tubelet=16)


def test_recolour_changes_only_the_needle_cell():
    pixels = torch.rand(8, 6, 64, 64)
    needle = {"glyph": "plus", "colour": "red", "cell": [2, 1], "frames": [6, 10]}
    out = recolour_needle(pixels, needle, "blue", grid=4)
    changed = (out != pixels).any(dim=1)  # (tubelets, H, W)
    assert changed[3:5, 32:48, 16:32].any() and not changed[:3].any() and not changed[5:].any()
    outside = changed[3:5].clone()
    outside[:, 32:48, 16:32] = False
    assert not outside.any()
    cell = out[3, :, 32:48, 16:32]
    assert torch.equal(cell[:3], cell[3:])  # both frames of the tubelet drawn alike
    assert cell[2].max() == pytest.approx(230 / 255) and cell[0].max() == pytest.approx(40 / 255)  # blue


def test_probe_examples_and_video_disjoint_split():
    rows = read_question_rows(FIXTURE)
    examples = probe_examples(rows, tokens_per_tubelet=16)
    assert len(examples) == 6 and all(len(e.drop) == 2 for e in examples)
    train, test = split_by_video(examples, 3, 3, seed=0)
    assert len(train) == 3 and len(test) == 3
    assert not {examples[i].video_id for i in train} & {examples[i].video_id for i in test}
    train, test = split_by_video(examples, 2, 3, seed=0)  # a video never straddles: its third needle is left out
    assert len(train) == 2 and len(test) == 3
    assert first_video_rows(rows, 1) == [0, 1, 2]


def test_needle_tokens_are_where_the_vision_features_change():
    """The token map matches the model's pixel shuffle: recolouring a needle moves its tokens most."""
    from hpft.models.loading import load_vlm

    vlm, tokenizer = load_vlm("tiny-omni")
    from hpft.data.datamodule import NeedleQADataset

    dataset = NeedleQADataset(FIXTURE, 16, tokenizer, 16, vlm.config.image_token_id, 2, 64)
    needle = dataset.rows[0]["needle"]
    pixels = dataset[0]["pixel_values_videos"]
    other = "white" if needle["colour"] != "white" else "red"
    with torch.no_grad():
        features = vlm.get_video_features(torch.stack([pixels, recolour_needle(pixels, needle, other, 4)]))
    a, b = features.pooler_output
    tokens = needle_token_index(needle, 16)
    assert (a - b).norm(dim=-1).topk(2).indices.sort().values.tolist() == tokens
    # Encoding only the needle's tubelets gives the same features as encoding the whole video.
    subset = recoloured_needle_features(vlm, pixels, needle, tokens, grid=4, colours=(other,))
    assert torch.allclose(subset[0], b[tokens], atol=1e-5)
    ids, visual, first_query = probe_prompt(tokenizer, needle["glyph"], 128, vlm.config.image_token_id)
    assert visual == list(range(visual[0], visual[0] + 128))
    assert ids[visual[0] : visual[0] + 128] == [vlm.config.image_token_id] * 128
    # With frame labels the visual tokens come in 16-token runs, each after its " Frame k:" label.
    ids, visual, first_query = probe_prompt(
        tokenizer, needle["glyph"], 128, vlm.config.image_token_id, FrameLabels(tokens_per_tubelet=16)
    )
    assert len(visual) == 128 and all(ids[i] == vlm.config.image_token_id for i in visual)
    assert tokenizer.decode(ids[visual[15] + 1 : visual[16]]).strip() == "Frame 3:"
    assert sum(ids[i] == vlm.config.image_token_id for i in range(len(ids))) == 128
    assert tokenizer.decode(ids[first_query:]).strip().startswith("Question")
    assert "Options" not in tokenizer.decode(ids)


# --------------------------------------------------------------------------------------- model passes (tiny)


def test_unreduced_scores_come_from_every_mixing_block(tiny_lm):
    p = make_prompt(tiny_lm, num_visual=24, question_lengths=(5, 7))
    out = unreduced_block_scores(
        tiny_lm, p.inputs_embeds, p.visual_mask, p.query_mask, ReductionConfig("none", 1.0), p.attention_mask
    )
    kinds = NemotronHAdapter(tiny_lm).kinds
    assert out.blocks == [b for b, k in enumerate(kinds) if k in ("attention", "mamba")]
    assert out.scores.shape == (2, len(out.blocks), 24) and (out.scores >= 0).all()
    mamba = [m for m, k in enumerate(out.kinds) if k == "mamba"]
    attention = [m for m, k in enumerate(out.kinds) if k == "attention"]
    # Mamba scores are normalised over the visual tokens; attention also spends mass on text keys.
    assert torch.allclose(out.scores[:, mamba].sum(-1), torch.ones(2, len(mamba)), atol=1e-5)
    assert (out.scores[:, attention].sum(-1) < 1 + 1e-5).all()


def _states(lm, embeds, keep, cut, variant):
    return last_block_states(lm, embeds, keep, cut, variant)


def test_cut_variants(tiny_lm):
    p = make_prompt(tiny_lm, num_visual=24, question_lengths=(6,))
    embeds = p.inputs_embeds
    keep = torch.ones(embeds.shape[1], dtype=torch.bool)
    keep[[3 + 5, 3 + 6, 3 + 15]] = False
    adapter = NemotronHAdapter(tiny_lm)
    last = len(adapter.blocks) - 1
    with torch.no_grad():
        reference = tiny_lm(inputs_embeds=embeds).logits
        deleted_reference = tiny_lm(inputs_embeds=embeds[:, keep]).logits
    full = _states(tiny_lm, embeds, keep, 0, "full")
    assert torch.allclose(adapter.logits(full), reference[:, keep], atol=1e-4)  # the model's own forward
    deleted = _states(tiny_lm, embeds, keep, 0, "deleted")
    assert torch.allclose(adapter.logits(deleted), deleted_reference, atol=1e-4)  # as if never there
    assert torch.allclose(_states(tiny_lm, embeds, keep, last, "hybrid"), full, atol=1e-5)  # cut after the end
    assert adapter.kinds[0] == "mamba"  # the only mixer before a cut at 0: resetting it forgets everything
    assert torch.allclose(_states(tiny_lm, embeds, keep, 0, "reset"), deleted, atol=1e-5)
    hybrid = _states(tiny_lm, embeds, keep, 0, "hybrid")
    assert not torch.allclose(hybrid, deleted, atol=1e-4)  # the Mamba block absorbed the dropped tokens
    # Tokens before the first dropped one never met it, in any variant (causality).
    assert torch.allclose(hybrid[:, :8], deleted[:, :8], atol=1e-5)


# --------------------------------------------------------------------------------------------------- checks


def _cfg(out, *overrides, logger: str = "none"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("analyze", overrides=[f"paths.output_dir={out}", f"logger={logger}", *overrides])


def test_default_config_composes_and_passes_the_checks(tmp_path):
    cfg = _cfg(tmp_path)
    settings, reduction, model_config, problems = check_settings(cfg)
    assert problems == [] and settings.cut_block == 0 and reduction.scorer == "unified"
    assert cfg.data.num_frames == cfg.num_frames and cfg.data.val_videos == cfg.num_videos


def test_bad_settings_are_reported_together(tmp_path):
    cfg = _cfg(tmp_path, "probe.cut_block=3", "num_videos=0", "sparsity.masses=[0.5,1.5]", "scorer=random")
    _, _, _, problems = check_settings(cfg)
    text = "\n".join(problems)
    assert "probe.cut_block=3: block 3 is a mlp block" in text and "choose one of [0, 1, 2, 4, 5, 7, 9, 10]" in text
    assert "num_videos=0" in text and "sparsity.masses" in text and len(problems) == 3


def test_layer_pattern_checks():
    config = SimpleNamespace(layers_block_type=["mamba", "mlp", "mamba"])
    problems = check_layer_pattern(config, 7)
    assert any("no attention block" in p for p in problems)
    assert any("probe.cut_block=7: out of range" in p for p in problems)
    assert check_layer_pattern(SimpleNamespace(layers_block_type=["attention", "mamba"]), 1)[0].startswith(
        "probe.cut_block=1: the last block"
    )


def test_too_few_needles_for_the_probe():
    rows = read_question_rows(FIXTURE)
    assert check_rows(rows, _settings(train_size=3, test_size=3), 16, 16, 2) == []
    problems = check_rows(rows, _settings(train_size=4, test_size=3, num_items=9), 16, 16, 2)
    assert any("probe.train_size=4 + probe.test_size=3" in p for p in problems)
    assert any("num_items=9" in p for p in problems)
    assert any("num_frames=32" in p for p in check_rows(rows, _settings(), 32, 16, 2))


# ------------------------------------------------------------------------------------------------------- CLI


def _run_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpft.analyze", f"out={tmp_path / 'run'}", "progress=false", *args],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_analyze_on_the_fixture_writes_json_pngs_and_wandb_media(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    cfg = _cfg(
        run, "data=needle_fixture", "num_videos=2", "num_items=3", "probe.train_size=2",
        "probe.test_size=1", "probe.steps=50", "progress=false", logger="default",
    )  # fmt: skip
    analyze(cfg)
    results = json.loads((run / "analysis.json").read_text())
    assert {"sparsity", "stability", "probing", "layer_pattern", "num_items", "wall_s"} <= set(results)
    assert results["num_items"] == 3 and results["num_videos"] == 2
    kinds = {row["kind"] for row in results["sparsity"]["blocks"]}
    assert kinds == {"attention", "mamba"} and set(results["sparsity"]["by_kind"]) == {"attention", "mamba"}
    assert {"cover_50", "cover_90", "needle_share"} <= set(results["sparsity"]["blocks"][0])
    size = len(results["stability"]["blocks"])
    assert set(results["stability"]["matrices"]) == {"jaccard_10", "jaccard_25", "spearman"}
    assert len(results["stability"]["matrices"]["spearman"]) == size
    assert len(results["stability"]["adjacent"]) == size - 1
    probing = results["probing"]
    assert set(probing["accuracy"]) == {"full", "hybrid", "reset", "deleted"}
    assert probing["chance"] == pytest.approx(1 / 8) and probing["test_examples"] == 8
    assert probing["accuracy"]["deleted"] == pytest.approx(1 / 8)  # kept inputs identical across colours
    for name in EXPECTED_PNGS:
        assert (run / name).stat().st_size > 1000
    assert (run / "csv" / "metrics.csv").is_file()
    media = list((run / "wandb").glob("offline-run-*/files/media/**/*"))
    assert any(p.suffix == ".png" for p in media) and any(p.name.endswith(".table.json") for p in media)


def test_cli_impossible_setting_exits_2(tmp_path):
    result = _run_cli(tmp_path, "data=needle_fixture", "probe.cut_block=11", "logger=none")
    assert result.returncode == 2
    assert "probe.cut_block=11: the last block" in result.stderr and "python -m hpft.analyze" in result.stderr
    assert not (tmp_path / "run" / "analysis.json").exists()
