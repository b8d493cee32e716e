"""The prefill benchmark runs end to end and its FLOP model scales as it should."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hpft.models.tiny import medium_decoder_config
from hpft.reduction.flops import block_flops, prefill_flops

ROOT = Path(__file__).resolve().parents[1]


def test_flops_scale_linearly_except_attention():
    config = medium_decoder_config()
    for kind in ("mamba", "mlp"):
        assert abs(block_flops(kind, config, 2048) / block_flops(kind, config, 1024) - 2.0) < 1e-6
    ratio = block_flops("attention", config, 16384) / block_flops("attention", config, 8192)
    assert 2.0 < ratio < 4.0  # projections linear, the causal product quadratic
    kinds = ["mamba", "attention", "mlp"]
    assert prefill_flops(config, kinds, [100, 50, 50]) < prefill_flops(config, kinds, [100, 100, 100])


def test_bench_prefill_writes_every_field(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_prefill.py"), "--visual-tokens", "256", "--repeats", "1",
           "--json", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    result = json.loads(out.read_text())
    for key in ("full_s", "reduced_s", "speedup", "flop_bound", "efficiency", "score_overhead_frac"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert abs(result["realised_keep"] - 0.25) <= 0.01
    assert result["efficiency"] == result["speedup"] / result["flop_bound"]
