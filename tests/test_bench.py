"""bench.py runs end to end in its quick mode, and its model arithmetic matches the model it
measures. Timings themselves are never tested: they depend on the machine and its load."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.nn as nn

import bench
from bgpt import BGPT, VOCAB_SIZE, BGPTConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_run_prints_the_table_and_writes_the_figures(tmp_path):
    path = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench.py", "--quick", "--json", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train: bytes/s" in proc.stdout and "generate: b1 cached bytes/s" in proc.stdout
    train, gen, comp = json.loads(path.read_text())["results"]
    assert (train["config"], train["phase"], gen["phase"]) == ("tiny", "train", "generate")
    assert comp["phase"] == "compress" and comp["b1_bytes"] == 20 and comp["b1_round_trip"]
    assert comp["b1_compress_bytes_per_second"]["median"] > 0
    assert train["matmul_flops"] > 0 and gen["copy_bytes_per_second"] > 0
    assert train["bytes_per_step"] == 4 * 64 * 16 and train["step_seconds"]["n"] == 1
    assert train["bytes_per_second"]["median"] > 0 and train["peak_memory_bytes"] > 0
    assert gen["new_bytes"] == 20  # never_end() kept the random model from stopping at an EOP
    for B in bench.GEN_BATCHES:
        assert gen[f"b{B}_cached_bytes_per_second"]["median"] > 0
        assert gen[f"b{B}_identical"]  # the KV-cached path generates the uncached path's bytes


def test_flops_formula_counts_the_models_matmul_weights():
    """train_flops assumes 12 C^2 matmul weights per block and V*C in the tied output layer; count
    the real model's Linear weights instead and rebuild the total from the docstring's formula."""
    cfg = BGPTConfig(patch_size=4, max_patches=8, hidden_size=64, patch_layers=3, byte_layers=2,
                     n_heads=2)
    model = BGPT(cfg)

    def linear(m):
        return sum(x.weight.numel() for x in m.modules() if isinstance(x, nn.Linear))

    B, N, P, C = 3, 8, 4, 64
    patch = 6 * B * N * linear(model.patch_decoder) + 12 * 3 * B * N * N * C
    byte_weights = linear(model.byte_decoder) + model.byte_decoder.embed.weight.numel()  # + tied
    byte = 6 * B * (N - 1) * P * byte_weights + 12 * 2 * B * (N - 1) * P * P * C
    total, byte_part = bench.train_flops(cfg, B)
    assert (total, byte_part) == (patch + byte, byte)
    assert model.byte_decoder.embed.weight.shape == (VOCAB_SIZE, C)


def test_paper_config_spends_most_flops_in_the_byte_decoder():
    total, byte = bench.train_flops(BGPTConfig(), 1)
    assert 1.3e12 < total < 1.4e12 and 0.75 < byte / total < 0.8  # 16 positions per patch vs 1
