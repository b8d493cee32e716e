"""The training-step benchmark runs end to end on a tiny prompt and reports sane, comparable figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_train_writes_every_figure(tmp_path):
    out = tmp_path / "bench_train.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--config", "tiny", "--visual-tokens", "64",
           "--steps", "1", "--warmup", "0", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    assert "speedup" in proc.stdout and "command: python" in proc.stdout
    result = json.loads(out.read_text())["tiny"]
    for key in ("tokens_per_s_full", "tokens_per_s_reduced", "speedup", "peak_mem_full", "peak_mem_reduced",
                "mem_ratio", "step_s_full", "step_s_reduced"):  # fmt: skip
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    assert result["speedup"] == result["tokens_per_s_reduced"] / result["tokens_per_s_full"]
    assert result["mem_ratio"] == result["peak_mem_reduced"] / result["peak_mem_full"]
    assert math.isfinite(result["loss_full"]) and math.isfinite(result["loss_reduced"])
    # Both modes process the same prompt; the reduced one feeds its blocks fewer tokens (counted by hooks).
    assert result["tokens"] == 16 + 64 + 32 + 8
    num_blocks = len(result["kept_per_block"])
    assert result["decoder_tokens_full"] == num_blocks * result["tokens"]
    assert result["decoder_tokens_reduced"] == sum(result["tokens"] - 64 + k for k in result["kept_per_block"])
    assert result["decoder_tokens_reduced"] < result["decoder_tokens_full"]
    assert abs(result["realised_keep"] - 0.25) <= 0.01
