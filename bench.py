"""
Speed and memory of bgpt.py (bGPT, arXiv:2402.19155): training steps and generation, for a tiny
config and the paper's, with the machine's own matmul rate and copy bandwidth as yardsticks.

    python bench.py                         # tiny and paper configs: ~3 min on 2 CPU cores
    python bench.py --configs tiny          # under a minute
    python bench.py --json bench.json       # also write the raw figures
    python bench.py --quick                 # one training step and a few bytes of tiny (the test)

On a CPU it runs in fp32 with the threads torch has (torch.get_num_threads()); on a GPU in bf16
autocast. Each (config, phase) runs in a fresh subprocess, so that each peak memory is its own
(RSS is a process-lifetime peak: a paper run would otherwise hide the tiny one's, and vice versa).

What it measures:
  train     bytes per second of a full step (forward, backward, AdamW) on full-length random
            inputs: B * max_patches * P input bytes per step, median and range over --steps timed
            steps after --warmup; model FLOPs per step (the formula is in train_flops and printed
            with the table) and their utilisation of this machine's matmul rate; peak memory.
  generate  bytes per second generating --gen_bytes from a one-patch prompt, batch 1 and 8 (rows
            summed), with the KV caches and without (use_cache=False re-runs the patch decoder
            over the whole prefix for each patch and the byte decoder over the patch so far for
            each byte, as the released code does); whether both paths give the same bytes for a
            fixed seed; and the bound set by memory bandwidth: weight bytes read per generated
            byte over the measured copy bandwidth.

Timings on a shared machine are noisy: the table also gives the share of the CPUs that other
processes used while this one was timing (Linux only). Trust runs where that share is small.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import textwrap
import time
from contextlib import nullcontext

import torch

from bgpt import BGPT, EOP, VOCAB_SIZE, BGPTConfig

# The two configs of the issue. steps/warmup/gen_repeats are defaults that the flags override.
CONFIGS = {
    # hidden 128, 2 patch layers + 1 byte layer, 2 heads of 64, 64 patches (1 KiB), batch 4
    "tiny": dict(model=dict(hidden_size=128, patch_layers=2, byte_layers=1, n_heads=2, max_patches=64),
                 batch=4, steps=20, warmup=3, gen_repeats=5),
    # the paper's: hidden 768, 12 + 3 layers, 12 heads of 64, 512 patches (8 KiB), batch 1; a
    # training step takes seconds and GBs on a CPU, so few steps
    "paper": dict(model=dict(), batch=1, steps=3, warmup=2, gen_repeats=1),
}
GEN_BATCHES = (1, 8)

# ---------------------------------------------------------------------------------------------
# Timing helpers


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_cpu_seconds():
    """CPU seconds every process on the machine has spent busy since boot (None off Linux)."""
    try:
        with open("/proc/stat") as f:
            t = [int(a) for a in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(t) - t[3] - t[4]) / _HZ  # all but idle and iowait


def timed(fn, device):
    """Run fn() once. Returns (seconds, share of the machine's CPUs other processes used meanwhile
    (None off Linux), fn's result). Our own CPU time is process_time(), all threads included."""
    sync(device)
    busy0, own0, t0 = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
    result = fn()
    sync(device)
    t1, own1, busy1 = time.perf_counter(), time.process_time(), _busy_cpu_seconds()
    others = None
    if busy0 is not None:
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / ((os.cpu_count() or 1) * (t1 - t0))
    return t1 - t0, others, result


def summary(values):
    """Median and range: the median resists the odd slow repetition a shared machine produces."""
    return dict(median=statistics.median(values), min=min(values), max=max(values), n=len(values))


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak if sys.platform == "darwin" else peak * 1024


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# ---------------------------------------------------------------------------------------------
# The machine's yardsticks, measured in the same run


def matmul_rate(device, quick=False, repeats=5):
    """FLOP/s of one large square matmul: fp32 on a CPU, bf16 on a GPU (what training runs in)."""
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    n = 512 if quick else 2048 if device.type == "cpu" else 8192  # quick: a smoke test, not a measurement
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: thread pool, kernel selection
    times = [timed(lambda: a @ b, device)[0] for _ in range(repeats)]
    return 2 * n ** 3 / statistics.median(times)  # n^2 outputs, n multiply-adds each


def copy_bandwidth(device, quick=False, repeats=5):
    """Bytes/s of a 256 MiB tensor copy, reads plus writes (STREAM's convention), so far larger
    than any cache. A generated byte reads every weight once: this is what bounds generation."""
    src = torch.ones((32 if quick else 256) * 2 ** 18, device=device)  # fp32: 2^18 numbers per MiB
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page faults on first touch
    times = [timed(lambda: dst.copy_(src), device)[0] for _ in range(repeats)]
    return 2 * src.numel() * src.element_size() / statistics.median(times)


# ---------------------------------------------------------------------------------------------
# Model arithmetic

FLOPS_FORMULA = ("train FLOPs/step = 6 x weights x positions + 12 x layers x positions x context x C, "
                 "per decoder (PaLM's convention: forward + backward = 3 x forward; attention over "
                 "the whole context; embedding lookups free): patch decoder B*N positions, context N, "
                 "weights 12*C^2 per layer; byte decoder B*(N-1)*P positions, context P, weights "
                 "12*C^2 per layer + V*C for the tied output layer")


def train_flops(cfg, B):
    """Model FLOPs of one training step on (B, N*P) ids; see FLOPS_FORMULA. Returns (total, byte
    decoder's part). A matmul weight costs 2 FLOPs per position forward and 4 backward (the
    gradients of the input and of the weight): 6. Attention's q.k and att.v cost 2 x 2 x context
    x C per position and layer forward, 3x that with the backward: 12."""
    C, P, N = cfg.hidden_size, cfg.patch_size, cfg.max_patches
    block = 12 * C * C  # qkv 3C^2 + proj C^2 + MLP 4C^2 + 4C^2 (768: 7.1M weights)
    n_patch = B * N  # one position per patch
    n_byte = B * (N - 1) * P  # P positions per predicted patch (the header is never predicted)
    patch = 6 * n_patch * cfg.patch_layers * block + 12 * cfg.patch_layers * n_patch * N * C
    byte = 6 * n_byte * (cfg.byte_layers * block + VOCAB_SIZE * C) + 12 * cfg.byte_layers * n_byte * P * C
    return patch + byte, byte


def weight_bytes_per_generated_byte(model):
    """Bytes of weights a cached generate() reads per new byte at batch 1. Every byte runs the whole
    byte decoder once (its blocks, and its full embedding table: the tied output layer reads all
    257 rows); every P bytes the patch decoder runs once (its blocks, and only P + 1 rows of its
    embedding tables, a patch's P byte rows and one position row). KV cache reads are left out:
    at 1 KiB of output they are under 2% of the patch decoder's weights."""
    nbytes = lambda module: sum(p.numel() * p.element_size() for p in module.parameters())  # noqa: E731
    pd, bd = model.patch_decoder, model.byte_decoder
    row = pd.embed.weight[0].numel() * pd.embed.weight.element_size()  # one C-wide row
    patch = nbytes(pd.transformer.blocks) + nbytes(pd.transformer.ln_f) + (pd.patch_size + 1) * row
    return nbytes(bd) + patch / model.config.patch_size


def never_end(model):
    """Make EOP impossible to sample, so that a randomly initialised model generates the bytes it is
    asked for (a sampled EOP ends a row, and a random model samples one every ~257 bytes).
    The byte decoder's output is ln_f(x) @ embed.T: zero ln_f's scale and set its shift to 10 on
    one coordinate, and give EOP's row -10 there and 0 elsewhere: EOP's logit is -100 always.
    The other logits move by a little noise; the computation, and so the timing, is unchanged."""
    bd = model.byte_decoder
    with torch.no_grad():
        bd.transformer.ln_f.weight[0] = 0.0
        bd.transformer.ln_f.bias[0] = 10.0
        bd.embed.weight[EOP] = 0.0
        bd.embed.weight[EOP, 0] = -10.0
    return model


# ---------------------------------------------------------------------------------------------
# The phases


def bench_train(name, args, device):
    spec = CONFIGS[name]
    cfg = BGPTConfig(**spec["model"], checkpoint=args.checkpoint,
                     **({} if args.dropout is None else {"dropout": args.dropout}))
    B, steps = spec["batch"], args.steps or spec["steps"]
    warmup = spec["warmup"] if args.warmup is None else args.warmup
    torch.manual_seed(0)
    model = BGPT(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    step_model = torch.compile(model) if args.compile else model
    x = torch.randint(0, VOCAB_SIZE, (B, cfg.max_patches * cfg.patch_size), device=device)  # (B, T)

    def step():
        with autocast(device):
            _, loss = step_model(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    runs = [timed(step, device) for _ in range(steps)]
    seconds = [t for t, _, _ in runs]
    flops, byte_flops = train_flops(cfg, B)
    return dict(
        config=name, phase="train", params=model.num_params(), batch=B, dropout=cfg.dropout, checkpoint=cfg.checkpoint,
        bytes_per_step=x.numel(), step_seconds=summary(seconds),
        bytes_per_second=summary([x.numel() / t for t in seconds]),
        flops_per_step=flops, byte_decoder_flops_share=byte_flops / flops,
        flops_per_second=flops / statistics.median(seconds), peak_memory_bytes=peak_memory(device),
        matmul_flops=matmul_rate(device, quick=args.quick),  # right after the steps: the same machine load
        others_cpu_share=_median_share(runs))


def bench_generate(name, args, device):
    spec = CONFIGS[name]
    cfg = BGPTConfig(**{**spec["model"], "dropout": 0.0})
    torch.manual_seed(0)
    model = never_end(BGPT(cfg)).to(device).eval()
    P = cfg.patch_size
    n_new = min(args.gen_bytes, cfg.max_patches * P - P)  # tiny: 64 patches hold 1 KiB - the prompt
    prompt = torch.tensor([list(b"txt") + [EOP] * (P - 3)], device=device)  # the header patch of a .txt
    repeats = args.gen_repeats or spec["gen_repeats"]
    out = dict(config=name, phase="generate", params=model.num_params(), new_bytes=n_new,
               weight_bytes_per_byte=weight_bytes_per_generated_byte(model))
    runs_all = []
    for B in GEN_BATCHES:
        x = prompt.expand(B, P).contiguous()  # (B, P)
        generated = {}
        for use_cache in (True, False):
            def run(n=n_new):
                with autocast(device):
                    return model.generate(x, n, use_cache=use_cache,
                                          generator=torch.Generator(device).manual_seed(0))
            run(min(n_new, 2 * P))  # warm-up: allocations, thread pool, a patch boundary
            runs = [timed(run, device) for _ in range(repeats)]
            runs_all += runs
            generated[use_cache] = runs[-1][2]
            assert generated[use_cache].shape == (B, n_new), generated[use_cache].shape
            key = f"b{B}_{'cached' if use_cache else 'uncached'}"
            out[key + "_bytes_per_second"] = summary([B * n_new / t for t, _, _ in runs])
        out[f"b{B}_identical"] = torch.equal(generated[True], generated[False])
    out["peak_memory_bytes"] = peak_memory(device)
    out["copy_bytes_per_second"] = copy_bandwidth(device, quick=args.quick)  # the same machine load
    out["others_cpu_share"] = _median_share(runs_all)
    return out


def _median_share(runs):
    shares = [s for _, s, _ in runs if s is not None]
    return statistics.median(shares) if shares else None


PHASES = {"train": bench_train, "generate": bench_generate}


def run_phase(name, phase, args, device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return PHASES[phase](name, args, device)


def run_phase_in_subprocess(name, phase, argv):
    """A fresh process per phase: its peak RSS is this phase's alone."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_phase", f"{name}:{phase}"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr passes through
    if proc.returncode:
        raise SystemExit(f"bench.py: {name} {phase} failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Output


def rate(s):
    return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def gib(n):
    return f"{n / 2 ** 30:.2f} GiB"


def train_rows(r):
    ms, matmul = r["step_seconds"], r["matmul_flops"]
    return [
        ("params", f"{r['params'] / 1e6:.2f}M"),
        ("train: batch x bytes, dropout", f"{r['batch']} x {r['bytes_per_step'] // r['batch']:,}, {r['dropout']:g}"
                                          + (", checkpointed" if r.get("checkpoint") else "")),
        ("train: bytes/s, median (range)", rate(r["bytes_per_second"])),
        ("train: ms/step, median", f"{1e3 * ms['median']:,.1f} (n={ms['n']})"),
        ("train: model GFLOP/step", f"{r['flops_per_step'] / 1e9:,.1f} ({100 * r['byte_decoder_flops_share']:.0f}% byte dec.)"),
        ("train: model GFLOP/s", f"{r['flops_per_second'] / 1e9:,.1f}"),
        ("train: machine's matmul GFLOP/s", f"{matmul / 1e9:,.1f}"),
        ("train: utilisation", f"{100 * r['flops_per_second'] / matmul:.0f}%"),
        ("train: peak memory", gib(r["peak_memory_bytes"])),
        ("train: others' CPU use", share(r)),
    ]


def generate_rows(r):
    rows = [("params", f"{r['params'] / 1e6:.2f}M"), ("generate: new bytes per row", f"{r['new_bytes']:,}")]
    for B in GEN_BATCHES:
        for kind in ("cached", "uncached"):
            rows.append((f"generate: b{B} {kind} bytes/s", rate(r[f"b{B}_{kind}_bytes_per_second"])))
        rows.append((f"generate: b{B} cached == uncached", "yes" if r[f"b{B}_identical"] else "NO"))
    rows += [("generate: weight MB read per byte", f"{r['weight_bytes_per_byte'] / 1e6:,.1f}"),
             ("generate: machine's copy GB/s", f"{r['copy_bytes_per_second'] / 1e9:,.1f}")]
    for B in GEN_BATCHES:  # at batch B one read of the weights serves B rows
        bound = B * r["copy_bytes_per_second"] / r["weight_bytes_per_byte"]
        cached = r[f"b{B}_cached_bytes_per_second"]["median"]
        rows.append((f"generate: b{B} bandwidth bound bytes/s", f"{bound:,.0f} (cached at {100 * cached / bound:.0f}%)"))
    rows += [("generate: peak memory", gib(r["peak_memory_bytes"])), ("generate: others' CPU use", share(r))]
    return rows


def share(r):
    return "n/a" if r["others_cpu_share"] is None else f"{100 * r['others_cpu_share']:.0f}%"


def table(machine, results):
    """One table: a row per figure, a column per config."""
    names = [n for n in CONFIGS if any(r["config"] == n for r in results)]
    cells = {}  # label -> {config: text}, labels in order of first appearance
    for r in results:
        for label, text in (train_rows if r["phase"] == "train" else generate_rows)(r):
            cells.setdefault(label, {})[r["config"]] = text
    width = max(map(len, cells))
    cols = [max([len(n)] + [len(c.get(n, "-")) for c in cells.values()]) for n in names]
    header = " | ".join([" " * width] + [n.rjust(w) for n, w in zip(names, cols)])
    lines = [f"{machine['device']} | OMP_WAIT_POLICY {machine['omp_wait_policy']} | torch {torch.__version__}",
             "", header, "-" * len(header)]
    lines += [" | ".join([label.ljust(width)] + [c.get(n, "-").rjust(w) for n, w in zip(names, cols)])
              for label, c in cells.items()]
    notes = [FLOPS_FORMULA + ".",
             "Utilisation = model FLOP/s / the machine's matmul rate (a 2048^2 fp32 matmul on a CPU, 8192^2 "
             "bf16 on a GPU). Bandwidth bound = the machine's copy bandwidth (a 256 MiB copy, reads + writes) / "
             "weight bytes read per generated byte (x batch: the rows share one read); it binds only when the "
             "weights do not fit in the caches (the paper config's do not). Both yardsticks are measured in the "
             "same subprocess, right after the figures they judge."]
    busy = [r["others_cpu_share"] for r in results if r["others_cpu_share"] is not None]
    if busy and max(busy) > 0.1:
        notes.append(f"WARNING: other processes used up to {100 * max(busy):.0f}% of the CPUs while this ran, so "
                     "these timings understate the code's speed. With threads waiting actively (the OpenMP "
                     "default) a busy machine slows small ops by up to 30x; rerun when it is quiet.")
    return "\n".join(lines + [""] + [textwrap.fill(note, 100) for note in notes])


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,paper", help="comma-separated, from: " + ", ".join(CONFIGS))
    p.add_argument("--phases", default="train,generate", help="comma-separated, from: " + ", ".join(PHASES))
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default: tiny 20, paper 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps first (default: tiny 3, paper 2)")
    p.add_argument("--gen_bytes", type=int, default=1024, help="bytes to generate per row (capped by the context)")
    p.add_argument("--gen_repeats", type=int, default=None, help="timed generations per case (default: tiny 5, paper 1)")
    p.add_argument("--dropout", type=float, default=None,
                   help="training dropout (default: BGPTConfig's 0.1, as the release trains)")
    p.add_argument("--checkpoint", action="store_true",
                   help="activation checkpointing in training (BGPTConfig.checkpoint): less memory, ~1/3 more FLOPs "
                        "(not counted in the model FLOPs)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if available")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training (not generation)")
    p.add_argument("--json", default="", metavar="PATH", help="also write the raw figures here")
    p.add_argument("--quick", action="store_true", help="smoke test (its figures mean nothing): tiny only, "
                   "one training step, 20 bytes, small yardsticks, one thread, all in this process")
    p.add_argument("--_phase", default="", help=argparse.SUPPRESS)  # internal: run one phase, print JSON
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.steps, args.warmup, args.gen_bytes, args.gen_repeats = "tiny", 1, 0, 20, 1
    for name in args.configs.split(","):
        if name not in CONFIGS:
            p.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    for phase in args.phases.split(","):
        if phase not in PHASES:
            p.error(f"unknown phase {phase!r}; choose from {', '.join(PHASES)}")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast (none in the model)
        torch.backends.cudnn.allow_tf32 = True
    if args.quick:  # one thread: a busy machine cannot stall it (see the warning in table())
        torch.set_num_threads(1)
    if args._phase:  # a child: one phase, one JSON line on stdout
        name, phase = args._phase.split(":")
        print(json.dumps(run_phase(name, phase, args, device)))
        return None

    machine = dict(device=(f"cuda ({torch.cuda.get_device_name()}, bf16 autocast)" if device.type == "cuda"
                           else f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores, fp32)"),
                   omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"))
    report = dict(machine=machine, results=[], command=" ".join(["python", "bench.py", *argv]),
                  torch=torch.__version__, threads=torch.get_num_threads(), flops_formula=FLOPS_FORMULA)
    for name in args.configs.split(","):
        for phase in args.phases.split(","):
            print(f"bench.py: {name} {phase} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            if args.quick:  # in-process: peak memory is then the process's so far
                report["results"].append(run_phase(name, phase, args, device))
            else:
                report["results"].append(run_phase_in_subprocess(name, phase, argv))
            print(f"bench.py: {name} {phase} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            if args.json:  # after every phase, so that a long run cut short keeps what it measured
                with open(args.json, "w") as f:
                    json.dump(report, f, indent=1)
    print(table(machine, report["results"]))
    return report


if __name__ == "__main__":
    main()
