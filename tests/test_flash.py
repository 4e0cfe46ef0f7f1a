"""flash.py, the FlashAttention kernels written here, against attention written out: forward and
gradients over every shape the model makes (L == S, one new position, a KV cache's 1 < L < S,
ragged lengths, each head size), dropout, a whole BGPT, train.py, the blocks a query block visits
and the launch grids. On a CPU the kernels run through Triton's interpreter (conftest.py turns it
on); where CUDA is visible the last tests check the compiled kernels in bf16 against SDPA. Also
here: SDPA's batch chunks and torch.compile's graph breaks, which need no Triton."""

import os
import subprocess
import sys

import pytest
import torch

import bgpt
import train
from bgpt import BGPT, BGPTConfig
from conftest import ROOT, TINY, losses

try:  # a missing triton skips the kernel tests; requirements-dev.txt installs it on Linux
    import flash
except ImportError:
    flash = None

needs_triton = pytest.mark.skipif(flash is None, reason="triton is not installed "
                                  "(requirements-dev.txt installs it on Linux)")
interpreted = pytest.mark.skipif(flash is None or not flash.INTERPRET,
                                 reason="needs triton and TRITON_INTERPRET=1 (set by conftest.py "
                                        "where no GPU is visible)")
on_cuda = pytest.mark.skipif(flash is None or flash.INTERPRET or not torch.cuda.is_available(),
                             reason="needs a CUDA GPU, with the kernels compiled (not interpreted)")


@pytest.fixture
def small_tiles(monkeypatch):
    """16 x 16 tiles: L and S of 50-90 span 4-6 blocks, so the running maximum moves between
    blocks, future blocks are skipped and the last block is ragged."""
    monkeypatch.setattr(flash, "TILES", {k: {64: (16, 16, 4), 128: (16, 16, 4)}
                                         for k in flash.TILES})


def qkv(B, H, L, S, D, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=g) for n in (L, S, S))
    return [t.to(device, dtype).requires_grad_() for t in (q, k, v)]


def run(attend, q, k, v, dO):
    """attend's output and the gradients of q, k, v for the upstream gradient dO."""
    for t in (q, k, v):
        t.grad = None
    o = attend(q, k, v)
    o.backward(dO)
    return [o.detach()] + [t.grad for t in (q, k, v)]


def maxdiff(xs, ys):
    return max(float((x.float() - y.float()).detach().abs().max()) for x, y in zip(xs, ys))


def tiny_config(**kw):
    return BGPTConfig(**{**dict(patch_size=8, max_patches=8, hidden_size=32, patch_layers=2,
                                byte_layers=1, n_heads=2, dropout=0.0), **kw})


# ---------------------------------------------------------------------------------------------
# The algorithm in PyTorch


@needs_triton
def test_tiled_algorithm_equals_manual_with_the_log_sum_exp():
    q, k, v = (t.detach() for t in qkv(2, 2, 37, 70, 16))
    O, LSE = flash.attention_tiled(q, k, v, Br=16, Bc=16)
    assert maxdiff([O], [flash.attention_manual(q, k, v)]) < 1e-5
    scores = (q @ k.transpose(-2, -1)) / 4  # sqrt(16)
    visible = torch.ones(37, 70, dtype=torch.bool).tril(diagonal=70 - 37)
    assert maxdiff([LSE], [scores.masked_fill(~visible, float("-inf")).logsumexp(-1)]) < 1e-5


# ---------------------------------------------------------------------------------------------
# The kernels, through the interpreter


@interpreted
@pytest.mark.parametrize("B, H, L, S, D", [
    pytest.param(2, 2, 70, 70, 16, id="L==S, ragged, 5 blocks"),
    pytest.param(1, 3, 1, 67, 32, id="L==1, one new position"),
    pytest.param(2, 1, 50, 83, 64, id="1<L<S, a KV cache"),
    pytest.param(1, 2, 64, 64, 128, id="L==S, whole blocks"),
    pytest.param(3, 1, 5, 9, 32, id="under one block"),
])
def test_forward_and_gradients_equal_manual(B, H, L, S, D, small_tiles):
    q, k, v = qkv(B, H, L, S, D)
    dO = torch.randn(B, H, L, D, generator=torch.Generator().manual_seed(1))
    ours = run(flash.flash_attention, q, k, v, dO)
    assert maxdiff(ours, run(flash.attention_manual, q, k, v, dO)) < 2e-5


@interpreted
def test_fp16_in_fp32_inside(small_tiles):
    q, k, v = qkv(1, 2, 50, 50, 32, dtype=torch.float16)
    dO = torch.randn(1, 2, 50, 32).half()
    ours = run(flash.flash_attention, q, k, v, dO)
    assert all(t.dtype == torch.float16 for t in ours)
    ref = run(flash.attention_manual, *(t.detach().float().requires_grad_() for t in (q, k, v)),
              dO.float())
    assert maxdiff(ours, ref) < 1e-2  # fp16's rounding of inputs and outputs, not the sums


@interpreted
@pytest.mark.slow
def test_dropout_is_reproducible_and_the_keep_mask_is_the_kernels(small_tiles):
    B, H, L, S, D, p = 1, 2, 40, 70, 16, 0.3
    q, k, v = qkv(B, H, L, S, D)
    dO = torch.randn(B, H, L, D, generator=torch.Generator().manual_seed(1))
    drop = lambda seed: lambda q, k, v: flash.flash_attention(q, k, v, p, seed)  # noqa: E731
    first, again, other = (run(drop(seed), q, k, v, dO) for seed in (7, 7, 8))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert maxdiff(first[:1], other[:1]) > 0.1
    keep = flash.dropout_keep(7, B, H, L, S, p, q.device)  # (B, H, L, S)
    assert abs(float(keep.float().mean()) - (1 - p)) < 0.02
    manual = run(lambda q, k, v: flash.attention_manual(q, k, v, p, keep), q, k, v, dO)
    assert maxdiff(first, manual) < 2e-5
    # The seed comes from torch's generator: torch.manual_seed repeats a run.
    seeded = []
    for _ in range(2):
        torch.manual_seed(0)
        seeded.append(flash.flash_attention(q, k, v, p))
    assert torch.equal(*seeded)


@interpreted
def test_a_query_block_visits_only_key_blocks_up_to_its_diagonal(small_tiles):
    q, k, v = (t.detach() for t in qkv(1, 2, 64, 64, 16))
    _, _, visits = flash._forward(q, k, v, 0.0, 0, count=True)  # (B*H, query blocks)
    assert visits.tolist() == [[1, 2, 3, 4]] * 2  # 10 of 16 tiles: the 6 above the diagonal skipped
    for L, S in [(50, 83), (1, 67), (17, 17)]:
        q, k, v = (t.detach() for t in qkv(1, 1, L, S, 16))
        _, _, visits = flash._forward(q, k, v, 0.0, 0, count=True)
        assert visits[0].tolist() == flash.visited_blocks(L, S, 16, 16)
    assert flash.visited_blocks(50, 83, 16, 16) == [4, 5, 6, 6]  # S - L = 33 keys cached


@needs_triton
def test_launch_grids_fit_cuda_at_the_papers_shapes(monkeypatch):
    """The interpreter runs any grid; CUDA allows 2^31 - 1 programs on axis 0 and 65,535 on the
    others. The launches at the paper's batch 16 (12 heads of 64, 512 patches; the byte decoder
    16 x 511 rows of 16 positions), recorded on meta tensors with the kernels stubbed out."""
    grids = []

    class Stub:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *args, **kwargs: None

    for name in ("_flash_forward", "_flash_backward_dkdv", "_flash_backward_dq"):
        monkeypatch.setattr(flash, name, Stub())
    for B, L in [(16, 512), (16 * 511, 16)]:
        q, k, v = (torch.empty(B, 12, L, 64, device="meta") for _ in range(3))
        o, lse = flash._forward(q, k, v, 0.0, 0)
        flash._backward(torch.empty_like(o), q, k, v, o, lse, 0.0, 0)
    assert len(grids) == 6 and (16 * 511 * 12, 1) in grids  # 98,112 programs on axis 0
    assert all(g[0] <= 2 ** 31 - 1 and all(n <= 65_535 for n in g[1:]) for g in grids)
    with pytest.raises(ValueError):
        flash.launch_grid(1, 98_112)  # the other way round CUDA refuses


@needs_triton
def test_flash_stops_in_one_line_where_it_cannot_run(tmp_path):
    if not flash.INTERPRET:
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            flash.check(torch.device("cpu"), torch.float32)
        return
    with pytest.raises(ValueError, match="bfloat16"):  # the interpreter gets bf16 dots wrong
        flash.check(torch.device("cpu"), torch.bfloat16)
    # A CPU without the interpreter: train.py says how the kernel runs, in one line, exit 2.
    for i in range(4):
        (tmp_path / f"{i}.txt").write_text("some text " * 20)
    env = {**os.environ, "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "train.py", "--train_dir", str(tmp_path), "--out_dir",
                           str(tmp_path / "out"), "--attention", "flash", *TINY],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "CUDA GPUs" in proc.stderr and "TRITON_INTERPRET=1" in proc.stderr


@interpreted
def test_bench_kernel_times_both_cores():
    import bench

    rows = bench.kernel_timings({"tiny": (1, 2, 32, 32, 16)}, torch.device("cpu"), torch.float32,
                                repeats=1)
    assert rows[0]["flash_forward_backward_ms"] > 0 and rows[0]["sdpa_forward_ms"] > 0
    assert "speed" in bench.kernel_table(rows, "cpu")
    assert bench.KERNEL_SHAPES["byte decoder"] == (16 * 511, 12, 16, 16, 64)


def test_attention_names():
    assert BGPTConfig(attention="fused").attention == "sdpa"  # configs saved under the old name
    assert BGPTConfig().attention == "sdpa"
    with pytest.raises(ValueError, match="sdpa, flash or manual"):
        BGPTConfig(attention="triton")


# ---------------------------------------------------------------------------------------------
# The whole model and train.py


@interpreted
@pytest.mark.slow
def test_bgpt_with_flash_equals_manual():
    torch.manual_seed(0)
    flash_model = BGPT(tiny_config(attention="flash"))
    manual = BGPT(tiny_config(attention="manual"))
    manual.load_state_dict(flash_model.state_dict())
    x = torch.randint(0, 257, (2, 7 * 8))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])  # padded rows: the byte decoder skips them
    out = []
    for model in (flash_model, manual):
        logits, loss = model(x, mask)
        loss.backward()
        out.append([logits, loss] + [p.grad for p in model.parameters()])
    assert maxdiff(*out) < 1e-5
    # Greedy generation with the KV caches (L == S for the prompt, then L == 1): the same bytes.
    flash_model.eval(), manual.eval()
    prompt = x[:, :8 + 3]  # the header and 3 bytes of a patch in progress
    new = [model.generate(prompt, 20, top_k=1) for model in (flash_model, manual)]
    assert new[0].shape == (2, 20) and torch.equal(*new)


@interpreted
@pytest.mark.slow
def test_train_py_with_flash_gives_the_manual_runs_losses(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    for i in range(6):
        (d / f"f{i}.txt").write_bytes(b"the cat sat on the mat. " * (3 + i))
    runs = {}
    for attention in ("flash", "manual"):
        out = tmp_path / attention
        train.train(["--train_dir", str(d), "--out_dir", str(out), *TINY, "--max_steps", "3",
                     "--log_interval", "1", "--eval_interval", "3", "--attention", attention,
                     "--dtype", "float32"])  # the interpreter cannot do bf16, which CPUs may pick
        runs[attention] = losses(out)
    assert len(runs["flash"]) == 3
    assert runs["flash"] == pytest.approx(runs["manual"], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# SDPA's batch chunks and torch.compile (no Triton needed)


def test_sdpa_processes_rows_past_its_limit_in_chunks(monkeypatch):
    torch.manual_seed(0)
    model = BGPT(tiny_config())
    x = torch.randint(0, 257, (2, 7 * 8))
    logits, loss = model(x)  # byte decoder batch: 2 x 6 = 12 rows
    loss.backward()
    whole = [logits, loss] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    monkeypatch.setattr(bgpt, "SDPA_MAX_BATCH", 5)  # 12 rows: chunks of 5, 5, 2
    logits, loss = model(x)
    loss.backward()
    assert maxdiff(whole, [logits, loss] + [p.grad for p in model.parameters()]) < 1e-6


@pytest.mark.slow
def test_compiled_transformers_have_no_graph_breaks_as_shapes_vary():
    """train.py --compile compiles each decoder; batches of other patch counts and other numbers
    of real rows must reuse dynamic graphs, not break them into pieces."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = BGPT(tiny_config(dropout=0.1))  # SDPA, the default, with dropout as in training
    compiled = {}
    for name in ("patch_decoder", "byte_decoder"):
        compiled[name] = CompileCounter()
        getattr(model, name).compile(backend=compiled[name])
    frames = []
    for B, N, padded in [(2, 4, 0), (2, 6, 1), (3, 5, 2), (2, 8, 3), (4, 7, 1), (3, 3, 0)]:
        x = torch.randint(0, 257, (B, N * 8))
        mask = torch.ones(B, N, dtype=torch.long)
        mask[0, N - padded:] = 0  # fewer real rows for the byte decoder
        _, loss = model(x, mask)
        loss.backward()
        frames.append([c.frame_count for c in compiled.values()])
    torch._dynamo.reset()
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    # A new patch count, then a new batch size, each make a graph dynamic in that size once;
    # after that every shape reuses them.
    assert frames[-1] == frames[-3] and max(frames[-1]) <= 3, frames


@interpreted
@pytest.mark.slow
def test_compile_runs_the_flash_kernel_between_graphs():
    """torch.compile leaves flash_attention to run as it is (compiler.disable): same loss."""
    torch.manual_seed(0)
    model = BGPT(tiny_config(attention="flash"))
    x = torch.randint(0, 257, (2, 5 * 8))
    _, eager = model(x)
    for decoder in (model.patch_decoder, model.byte_decoder):
        decoder.compile(backend="eager")
    _, loss = model(x)
    loss.backward()
    torch._dynamo.reset()
    assert loss.item() == pytest.approx(eager.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Compiled for a GPU without one: Triton's compiler and the ptxas in its wheel run on a CPU

SM90 = r"""
import os, re, subprocess, sys, tempfile
import triton
import flash
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
POINTERS = {"Q", "K", "V", "O", "dO", "dK", "dV", "dQ"}
for name, kernel in [("forward", flash._flash_forward), ("dkdv", flash._flash_backward_dkdv),
                     ("dq", flash._flash_backward_dq)]:
    for D, small in [(64, False), (128, False), (64, True)]:  # small: the byte decoder's tile
        for dropout in (False, True):
            Br, Bc, warps = flash.tiles(name, 16, 16, D) if small else flash.TILES[name][D]
            const = dict(d=D, Br=Br, Bc=Bc, DROPOUT=dropout, COUNT=False, PRECISION="ieee")
            const = {a: c for a, c in const.items() if a in kernel.arg_names}
            sig = {a: "constexpr" if a in const else "*bf16" if a in POINTERS else
                   "*fp32" if a in ("LSE", "Delta") else "*i32" if a == "Visits" else
                   "fp32" if a in ("scale", "dropout_p") else "i32" for a in kernel.arg_names}
            sm90 = GPUTarget("cuda", 90, 32)
            compiled = triton.compile(ASTSource(kernel, sig, const), target=sm90,
                                      options=dict(num_warps=warps))
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(compiled.asm["cubin"])
                f.flush()
                usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True,
                                       text=True, check=True).stdout
            regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
            print(name, D, dropout, regs, stack)
"""


@needs_triton
@pytest.mark.slow
def test_kernels_compile_for_an_h100_without_register_spills(tmp_path):
    """The interpreter never compiles: this builds each kernel for sm_90 in bf16 with flash.TILES
    (head sizes 64 and 128) and the byte decoder's 16 x 16 tile, dropout on and off, and reads its
    stack frame, where spilled registers would go."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", SM90], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    if "cuobjdump" in proc.stderr and "No such file" in proc.stderr:
        pytest.skip("this triton wheel has no CUDA tools")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert len(rows) == 18 and all(stack == "0" for *_, stack in rows), proc.stdout


# ---------------------------------------------------------------------------------------------
# On a GPU: the compiled kernels in bf16 against PyTorch's SDPA (run by .ci/gpu)


@on_cuda
@pytest.mark.parametrize("B, H, L, S", [(16, 12, 512, 512), (16 * 511, 12, 16, 16),
                                        (4, 12, 1, 300), (4, 12, 100, 300)])
def test_cuda_bf16_matches_sdpa(B, H, L, S):
    """Both in bf16 against fp32: the kernel's error at most SDPA's, plus bf16 rounding."""
    import torch.nn.functional as F

    q, k, v = qkv(B, H, L, S, 64, dtype=torch.bfloat16, device="cuda")
    dO = torch.randn(B, H, L, 64, device="cuda", dtype=torch.bfloat16)
    visible = torch.ones(L, S, dtype=torch.bool, device="cuda").tril(diagonal=S - L)
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=visible)  # noqa: E731
    exact = run(sdpa, *(t.detach().float().requires_grad_() for t in (q, k, v)), dO.float())
    ours, theirs = run(flash.flash_attention, q, k, v, dO), run(sdpa, q, k, v, dO)
    for name, a, b, c in zip("O dQ dK dV".split(), ours, theirs, exact):
        err, ref = maxdiff([a], [c]), maxdiff([b], [c])
        print(f"{B}x{H}x{L}x{S} {name}: flash {err:.2e}, sdpa {ref:.2e} from fp32")
        assert err <= 2 * ref + 1e-2 * float(c.abs().max())


@on_cuda
def test_cuda_dropout_matches_its_keep_mask():
    B, H, L, S, D, p = 2, 4, 200, 300, 64, 0.1
    q, k, v = qkv(B, H, L, S, D, device="cuda")
    dO = torch.randn(B, H, L, D, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    ours = run(lambda q, k, v: flash.flash_attention(q, k, v, p, 5), q, k, v, dO)
    keep = flash.dropout_keep(5, B, H, L, S, p, q.device)
    assert maxdiff(ours, run(lambda q, k, v: flash.attention_manual(q, k, v, p, keep),
                             q, k, v, dO)) < 1e-4
