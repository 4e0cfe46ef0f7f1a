"""Helpers shared by the test modules (imported as `from conftest import ...`), and the
settings every test process starts with."""

import json
import os
import subprocess
import sys

import torch

from bgpt import VOCAB_SIZE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# flash.py's Triton kernels run on CPU tensors through Triton's interpreter, which must be chosen
# before triton is first imported: here, before any test module. Where a GPU is visible they run
# compiled, as in training (TRITON_INTERPRET=0 or 1 set outside wins either way).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A train.py model small enough for a step in milliseconds.
TINY = ["--hidden_size", "32", "--n_heads", "2", "--patch_layers", "1", "--byte_layers", "1",
        "--max_patches", "16", "--batch_size", "2", "--warmup_steps", "2", "--log_interval", "2",
        "--eval_interval", "3"]


def run(script, *args, env=None):
    """Run one of the scripts in a fresh process (1 thread: reproducible and kind to 2 cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def losses(out_dir, by_step=False):
    """The training losses train.py logged into out_dir/log.jsonl."""
    records = [r for r in map(json.loads, open(os.path.join(out_dir, "log.jsonl"))) if "loss" in r]
    return [(r["step"], r["loss"]) if by_step else r["loss"] for r in records]


def word_files(folder, grow=10, n=12, seed=0):
    """n text files of 30, 30 + grow, 30 + 2 grow, ... words from a six-word vocabulary."""
    folder.mkdir()
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        words = torch.randint(0, 6, (30 + grow * i,), generator=g).tolist()
        (folder / f"f{i:02d}.txt").write_text(" ".join("cat mat sat the on a".split()[w]
                                                       for w in words))
    return folder


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# Released checkpoints: a state dict in the released layout (Conv1D (in, out) weights, a one-hot
# Linear patch embedding, a 17-position byte decoder fed [feature, b0..b15]).


def official_state_dict(C=32, P=4, N=8, patch_layers=2, byte_layers=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.1  # noqa: E731
    sd = {"patch_level_decoder.patch_embedding.weight": r(C, P * VOCAB_SIZE),
          "patch_level_decoder.patch_embedding.bias": r(C),
          "patch_level_decoder.base.wte.weight": r(1, C),
          "patch_level_decoder.base.wpe.weight": r(N, C),
          "byte_level_decoder.base.transformer.wte.weight": r(VOCAB_SIZE, C),
          "byte_level_decoder.base.transformer.wpe.weight": r(P + 1, C)}
    for prefix, n in [("patch_level_decoder.base.", patch_layers),
                      ("byte_level_decoder.base.transformer.", byte_layers)]:
        for i in range(n):
            h = f"{prefix}h.{i}."
            for ln in ("ln_1", "ln_2"):
                sd[h + ln + ".weight"], sd[h + ln + ".bias"] = 1 + r(C), r(C)
            for name, shape in [("attn.c_attn", (C, 3 * C)), ("attn.c_proj", (C, C)),
                                ("mlp.c_fc", (C, 4 * C)), ("mlp.c_proj", (4 * C, C))]:
                sd[h + name + ".weight"], sd[h + name + ".bias"] = r(*shape), r(shape[1])
            sd[h + "attn.bias"] = torch.ones(1, 1, 64, 64).tril()  # old HF causal-mask buffers
            sd[h + "attn.masked_bias"] = torch.tensor(-1e4)
        sd[prefix + "ln_f.weight"], sd[prefix + "ln_f.bias"] = 1 + r(C), r(C)
    wte = sd["byte_level_decoder.base.transformer.wte.weight"]
    sd["byte_level_decoder.base.lm_head.weight"] = wte
    return sd
