"""
Train a bGPT model (arXiv:2402.19155) on a folder of files: generation, conversion or
classification.

    python train.py                                 # 1.97M parameters on the stdlib's .py files
    python train.py --help                          # every option, with its meaning
    python train.py --resume --out_dir out          # continue exactly where a run stopped
    python builders.py shakespeare                  # (and abc-midi, digits: folders under data/)
    python train.py --train_dir data/shakespeare/train --eval_dir data/shakespeare/test \
        --out_dir out/text
    python train.py --train_dir data/abc-midi/train --eval_dir data/abc-midi/test \
        --convert "abc->mid" --out_dir out/music
    python train.py --train_dir data/digits/train --eval_dir data/digits/test --classify \
        --init_from out/ckpt.pt --out_dir out/digits
    torchrun --standalone --nproc_per_node 8 train.py   # one node, 8 GPUs (DDP)

Every field of TrainConfig and of bgpt.BGPTConfig is a --flag. The run writes, into --out_dir,
ckpt.pt (model, optimizer, step, configs, RNG states; written atomically, every
--save_interval steps, at every evaluation and when stopped by Ctrl-C or SIGTERM) and log.jsonl
(one JSON record per log line and per evaluation).
"""

import argparse
import collections
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from bgpt import BGPT, EOP, BGPTClassifier, BGPTConfig, doc, official_config
from data import batch_loader, collate, compare_with_baselines, fail, file_ext, load_data, \
    loss_mask
from devices import DTYPES, all_reduce, any_rank, autocast, barrier, compile_decoders, \
    gather_rng_states, set_rng_state, setup_distributed, uses_bf16

# ---------------------------------------------------------------------------------------------
# Config. The defaults train a small model on the stdlib in under 10 minutes on a 2-core CPU.


@dataclass
class TrainConfig:
    # data and mode
    train_dir: str = doc("", "folder of training files (default: this Python's stdlib .py files)")
    eval_dir: str = doc("", "held-out files (default: every k-th training file, or the stdlib's)")
    eval_fraction: float = doc(0.05, "share of the training files held out without an eval_dir")
    convert: str = doc("", "conversion between paired files: 'abc->mid' trains one way, "
                           "'abc&mid' both ways (default: none, generation)")
    classify: bool = doc(False, "classification: the label is the file name before the first '_'")
    loss_skip_bytes: int = doc(0, "content bytes at the start of every file left out of the loss, "
                                  "in whole patches (e.g. a CPU trace's memory and first state)")
    # where the run lives
    out_dir: str = doc("out", "where ckpt.pt and log.jsonl go")
    init_from: str = doc("", "our checkpoint or a released .pth to start from (default: none)")
    resume: bool = doc(False, "continue the run in out_dir exactly; optimizer, schedule, "
                              "intervals, eval_dir, dtype, device and compile may be given anew")
    overwrite: bool = doc(False, "start a new run in an out_dir that holds one, replacing it")
    preset: str = doc("", "'paper': the paper's model and training settings (flags given win)")
    # batch and schedule
    batch_size: int = doc(8, "sequences per micro-batch of one process")
    grad_accum: int = doc(1, "micro-batches per optimizer step (the loss is averaged over them)")
    max_steps: int = doc(1000, "optimizer steps")
    lr: float = doc(2e-3, "peak learning rate")
    min_lr: float = doc(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = doc(50, "linear warm-up from 0 to lr, in steps")
    lr_decay_steps: int = doc(0, "length of the warm-up + cosine schedule (0 = max_steps)")
    weight_decay: float = doc(0.1, "AdamW decay, on weight matrices and embeddings only")
    beta1: float = doc(0.9, "AdamW beta1")
    beta2: float = doc(0.95, "AdamW beta2")
    grad_clip: float = doc(1.0, "clip the gradient's global norm to this (0 = off)")
    # evaluation, logging, checkpoints
    eval_interval: int = doc(500, "evaluate (and save a checkpoint) every this many steps")
    eval_max_files: int = doc(200, "evaluate on at most this many held-out files (0 = all)")
    log_interval: int = doc(50, "one log line every this many steps")
    save_interval: int = doc(600, "also save a checkpoint every this many steps")
    # machine
    seed: int = doc(0, "seeds the initialisation, the data order, the crops and dropout")
    device: str = doc("auto", "auto = cuda, then mps, then cpu")
    dtype: str = doc("auto", "float32, bfloat16 (autocast), or auto: bfloat16 on CUDA and on "
                             "CPUs with native bf16")
    compile: bool = doc(False, "torch.compile both transformers (faster steps after a slow first)")


# 128 patches x 16 bytes = 2 KiB of context, 1.97M parameters. The byte decoder runs on every
# byte and the patch decoder on every 16th, so on a CPU a patch layer costs 1/16 of a byte layer:
# the default spends its FLOPs on a deeper patch decoder. Model fields not given take these.
DEFAULT_MODEL = dict(max_patches=128, hidden_size=128, patch_layers=6, byte_layers=1, n_heads=2,
                     dropout=0.0)
# --preset paper: the paper's model (768 wide, 12 + 3 layers, 12 heads of 64, 512 patches = 8 KiB,
# dropout 0.1: 110M parameters), the release's learning rate decaying 10x, 16 sequences per
# process, torch.compile.
PRESETS = {"paper": dict(hidden_size=768, patch_layers=12, byte_layers=3, n_heads=12,
                         max_patches=512, dropout=0.1, lr=1e-4, min_lr=1e-5, batch_size=16,
                         compile=True)}
ARCHITECTURE = ("patch_size", "max_patches", "hidden_size", "patch_layers", "byte_layers",
                "n_heads")  # what a checkpoint fixes; the other model fields may change
MODEL_HELP = {  # bgpt.py's help speaks of the paper's config; here the defaults are the small ones
    "max_patches": "context in patches, header included (max_patches x patch_size bytes)",
    "n_heads": "H, attention heads; head size D = hidden_size / n_heads",
    "dropout": "dropout after embeddings, on attention weights and residuals"}
# What --resume may change. The checkpoint fixes the architecture, the data (files, split, crops'
# seed, skipped prefix) and the mode: another value for one of those is an error. The rest applies
# from the resumed step on (a new lr or betas reach the optimizer; the schedule follows the step).
RESUME_FIXED = ARCHITECTURE + ("train_dir", "eval_fraction", "seed", "loss_skip_bytes",
                               "convert", "classify")
RESUME_FREE = ("lr", "min_lr", "beta1", "beta2", "weight_decay", "grad_clip",  # optimizer
               "warmup_steps", "lr_decay_steps", "max_steps", "batch_size", "grad_accum",
               "eval_interval", "eval_max_files", "log_interval", "save_interval", "eval_dir",
               "dtype", "device", "compile", "dropout", "attention", "byte_patches", "checkpoint")


def parse_args(argv=None):
    """One --flag per config field. Returns (TrainConfig, model fields, the flags given)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="python train.py [--name value ...]   (python train.py --help lists them)")
    for cls, title in [(TrainConfig, "training"), (BGPTConfig, "model (bgpt.BGPTConfig)")]:
        group = parser.add_argument_group(title)
        for f in fields(cls):
            default = DEFAULT_MODEL.get(f.name, f.default) if cls is BGPTConfig else f.default
            kind = {bool: _bool, int: int, float: float, str: str}[type(f.default)]
            help = MODEL_HELP.get(f.name, f.metadata["help"])
            if "(default" not in help:  # the default, where the help does not state it
                help += f" (default: {'none' if default == '' else default})"
            flag = dict(nargs="?", const=True) if kind is _bool else {}  # "--classify" = true
            group.add_argument(f"--{f.name}", type=kind, default=argparse.SUPPRESS,
                               metavar=type(f.default).__name__, help=help, **flag)
    given = vars(parser.parse_args(argv))  # only the flags actually typed (defaults suppressed)
    if given.get("preset", "") not in ("", *PRESETS):
        fail(f"--preset must be one of {', '.join(PRESETS)}, not {given['preset']!r}")
    given = {**PRESETS.get(given.get("preset"), {}), **given}  # a preset: flags, typed ones win
    train_fields = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in given.items() if k in train_fields})
    model_fields = {**DEFAULT_MODEL, **{k: v for k, v in given.items() if k not in train_fields}}
    return cfg, model_fields, set(given)


def _bool(s):
    if s.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
    return s.lower() in ("1", "true", "yes")


def check_config(cfg):
    """Values no run can use: a one-line error before anything is read or written."""
    at_least = dict(batch_size=1, grad_accum=1, max_steps=0, warmup_steps=0, lr_decay_steps=0,
                    eval_interval=1, eval_max_files=0, log_interval=1, save_interval=1,
                    loss_skip_bytes=0)
    for name, low in at_least.items():
        if getattr(cfg, name) < low:
            fail(f"--{name} must be at least {low}, not {getattr(cfg, name)}")
    for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
        if not getattr(cfg, name) >= 0:  # also rejects nan
            fail(f"--{name} must be a number >= 0, not {getattr(cfg, name)}")
    if not 0 < cfg.eval_fraction < 1:
        fail(f"--eval_fraction must lie in (0, 1), not {cfg.eval_fraction}")
    if cfg.resume and cfg.overwrite:
        fail("--resume continues the run in --out_dir and --overwrite replaces it: pick one")
    if cfg.classify and cfg.convert:
        fail("--classify and --convert are two different modes: pick one")
    if cfg.classify and cfg.loss_skip_bytes:  # a label has no bytes to leave out of its loss
        fail("--loss_skip_bytes leaves bytes out of the byte loss; --classify has none")
    if cfg.dtype not in DTYPES:
        fail(f"--dtype must be one of {', '.join(DTYPES)}, not {cfg.dtype!r}")


# ---------------------------------------------------------------------------------------------
# Model: new, from --init_from, or resumed


def load_checkpoint(path, what):
    """Read a checkpoint, ours or released, with weights_only=True: only tensors and plain Python
    values are rebuilt, so a file cannot run code when it is loaded (a full pickle can)."""
    if not os.path.isfile(path):
        fail(f"{what}: no such file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or carrying code: name the file, not torch's trace
        reason = "it holds more than tensors and plain values" if "weights_only" in str(e) \
            else "truncated or not a checkpoint"
        fail(f"{what}: {path} is not a readable checkpoint ({reason})")
    if not isinstance(state, dict):
        fail(f"{what}: {path} is not a checkpoint (it holds a {type(state).__name__})")
    return state


def is_ours(state):
    return "config" in state and "model" in state


def first_line(e):
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def model_config(model_fields, state, given):
    """The model's BGPTConfig; --init_from's checkpoint fixes its architecture."""
    if state is None:
        return BGPTConfig(**model_fields)
    free = {k: v for k, v in model_fields.items() if k not in ARCHITECTURE}
    if is_ours(state):
        mcfg = BGPTConfig(**{**state["config"]["model"], **free})
    else:
        released = state["model"] if isinstance(state.get("model"), dict) else state
        mcfg = official_config(released, **free)
    for k in ARCHITECTURE:  # fixed by the checkpoint: a flag that asks for another is an error
        if k in given and model_fields[k] != getattr(mcfg, k):
            fail(f"--init_from: the checkpoint's {k} is {getattr(mcfg, k)}; drop --{k} "
                 f"{model_fields[k]}")
    return mcfg


def resume_config(saved, cfg, model_fields, given):
    """The resumed run's (TrainConfig, model fields, changes): the checkpoint's configs with the
    flags given now. A RESUME_FIXED flag with a new value is an error; changes maps each
    RESUME_FREE flag with a new value to (saved, now)."""
    was, now = {**saved["train"], **saved["model"]}, {**asdict(cfg), **model_fields}
    for k in sorted(given & set(RESUME_FIXED)):
        if k in was and now[k] != was[k]:
            fail(f"--resume: the run's {k} is {was[k]!r}; --{k} cannot change on resume "
                 "(drop it, or start a new run with --init_from)")
    if "init_from" in given:
        fail("--resume: the weights come from the checkpoint; drop --init_from")
    changes = {k: (was.get(k), now[k]) for k in sorted(given & set(RESUME_FREE))
               if was.get(k) != now[k]}
    train_fields = {f.name for f in fields(TrainConfig)}
    merged = {**{k: v for k, v in saved["train"].items() if k in train_fields},
              **{k: now[k] for k in given if k in train_fields},
              "out_dir": cfg.out_dir, "resume": True, "init_from": "", "overwrite": False}
    model = {**saved["model"], **{k: now[k] for k in given if k in model_fields}}
    return TrainConfig(**merged), model, changes


def build_model(cfg, mcfg, state, n_classes):
    """A new model for mcfg, with --init_from's weights when there are some."""
    model = BGPTClassifier(mcfg, n_classes) if cfg.classify else BGPT(mcfg)
    if state is None:
        return model
    if cfg.classify:  # a generative model's patch decoder, or a classifier's, ours or released
        return model.load_patch_decoder(state if not is_ours(state) else state["model"])
    if not is_ours(state):
        free = {k: v for k, v in asdict(mcfg).items() if k not in ARCHITECTURE}
        return BGPT.from_official(state, **free)
    if state["config"]["train"]["classify"]:
        raise ValueError("it holds a classifier; generation needs a generative checkpoint")
    model.load_state_dict(state["model"])
    return model


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule


def make_optimizer(model, cfg):
    """AdamW; weight decay on matrices and embedding tables only (not on biases and LayerNorms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).is_cuda  # one kernel for all the updates, on a GPU
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def lr_at(step, cfg):
    """The learning rate of step number `step` (0-based): a linear warm-up, then a cosine decay
    to min_lr. The step alone decides it, so a resumed run needs no schedule state."""
    return cfg.lr * lr_factor(step, cfg)


def lr_factor(step, cfg):
    total = cfg.lr_decay_steps or cfg.max_steps
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return (cfg.min_lr + (cfg.lr - cfg.min_lr) * cosine) / cfg.lr if cfg.lr else 0.0


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model, dataset, device, cfg, rank=0, world=1):
    """Held-out figures. loss and bpb are the release's: mean cross-entropy over every predicted
    id (padding and end patch included; the --loss_skip_bytes prefix excluded) and that over ln 2.
    content_bpb is a code length: the bits the model gives each file's content bytes plus the EOP
    that ends them (when the file fits the context), over the content bytes; a compressor's bits
    per byte on the same bytes compare. Classifiers get their accuracy. Under DDP each process
    scores every world-th file and the sums are added up: all get the same figures."""
    model.eval()
    P = model.config.patch_size
    content = not cfg.convert and not cfg.loss_skip_bytes
    sums = collections.Counter()
    mine = range(rank, len(dataset), world)
    for start in range(0, len(mine), cfg.batch_size):
        batch = [dataset[i] for i in mine[start:start + cfg.batch_size]]
        x, mask, labels = (t.to(device) for t in collate(batch, P))
        with autocast(device, cfg.dtype):
            logits, _ = model(x, mask)
        if isinstance(model, BGPTClassifier):
            sums["correct"] += int((logits.argmax(-1) == labels).sum())
            sums["n"] += len(labels)
            continue
        nll = -logits.float().log_softmax(-1).gather(-1, x[:, P:, None])[..., 0]  # (B, T - P)
        keep = loss_mask(mask, cfg, P)[:, 1:].repeat_interleave(P, 1).bool()  # (B, T - P)
        sums["nll"] += float(nll[keep].sum())
        sums["ids"] += int(keep.sum())
        for row, ids in zip(nll, x[:, P:].tolist()) if content else ():
            n = ids.index(EOP) if EOP in ids else len(ids)  # content bytes in the window
            sums["bits"] += float(row[:min(n + 1, len(ids))].sum()) / math.log(2)
            sums["bytes"] += n
    model.train()
    keys = ("correct", "n", "nll", "ids", "bits", "bytes")
    total = all_reduce(torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64), world,
                       device).tolist()
    sums = dict(zip(keys, total))
    if isinstance(model, BGPTClassifier):
        return {"accuracy": sums["correct"] / max(sums["n"], 1)}
    out = {"loss": sums["nll"] / max(sums["ids"], 1)}
    out["bpb"] = out["loss"] / math.log(2)
    if content and sums["bytes"]:  # (held-out files of 0 bytes have no bits per byte)
        out["content_bpb"] = sums["bits"] / sums["bytes"]
    return out


def evaluate_and_log(run, log, step):
    """Every process evaluates its share; rank 0 logs and prints the whole set's figures."""
    result = evaluate(run.model, run.eval_ds, run.device, run.cfg, run.rank, run.world)
    if run.rank == 0:
        write_log(log, {"step": step, "eval": result})
        figures = " | ".join(f"{k} {v:.4f}" for k, v in result.items())
        print(f"step {step:5d} | held-out {figures}")
    return result


# ---------------------------------------------------------------------------------------------
# Checkpoints. A checkpoint holds only tensors and plain values (configs as dicts, RNG states as
# tensors), so it loads with weights_only=True.


class RunError(Exception):
    """A run that cannot go on (a non-finite loss, an all-masked batch), reported in one line."""


def save(run, step):
    """Every rank's RNG state, then rank 0 writes the checkpoint while the others wait."""
    rngs = gather_rng_states(run.world, run.device)
    if run.rank == 0:
        save_checkpoint(run.ckpt_path, model=run.model.state_dict(), step=step,
                        optimizer=run.optimizer.state_dict(), rng=rngs, data=run.data_info,
                        config={"train": asdict(run.cfg), "model": asdict(run.mcfg)})
    barrier(run.world, run.device)


def save_checkpoint(path, **state):
    """Write to path + ".tmp", flush it to disk, then rename it over path: a crash, a kill or a
    full disk at any moment leaves either the old checkpoint or the new one, never half of one."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        fail(f"could not write {path} ({e.strerror or e}); the previous checkpoint is kept")


class StopSignal:
    """Ctrl-C (SIGINT) and SIGTERM set a flag instead of killing the process: the loop finishes
    its step, writes a checkpoint and exits. SIGKILL cannot be caught; the checkpoints written
    every --save_interval steps are there for it."""

    def __init__(self):
        self.received, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():  # (only there can it listen)
            self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT,
                                                                        signal.SIGTERM)}

    def handle(self, signum, frame):
        if self.received is None:
            print(f"\n{signal.Signals(signum).name}: stopping after this step", file=sys.stderr)
        self.received = signum

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------------------------------------
# Setup: everything the loop needs, checked before anything is written


def setup(argv=None):
    cfg, model_fields, given = parse_args(argv)
    check_config(cfg)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    resumed, changes = None, {}
    if cfg.resume:
        if not os.path.isfile(ckpt_path):
            fail(f"--resume: no checkpoint at {ckpt_path}")
        resumed = load_checkpoint(ckpt_path, "--resume")
        if not is_ours(resumed) or "optimizer" not in resumed:
            fail(f"--resume: {ckpt_path} is not a training checkpoint of this project")
        cfg, model_fields, changes = resume_config(resumed["config"], cfg, model_fields, given)
        check_config(cfg)
    elif os.path.exists(ckpt_path) and not cfg.overwrite:
        fail(f"{ckpt_path} already holds a run: pass --resume to continue it or --overwrite "
             "to replace it (or choose another --out_dir)")
    if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        fail(f"--out_dir: {cfg.out_dir} is a file, not a folder")

    rank, world, device = setup_distributed(cfg.device)
    torch.manual_seed(cfg.seed + rank)  # the same initial weights on every rank: DDP broadcasts
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    state = load_checkpoint(cfg.init_from, "--init_from") if cfg.init_from else None
    try:
        mcfg = model_config(model_fields, state, given)
        hold_out = not resumed["config"]["train"]["eval_dir"] if resumed else None
        train_ds, eval_ds = load_data(cfg, mcfg, hold_out)  # encoded for the model's patch_size
    except (OSError, ValueError) as e:
        fail(first_line(e))
    if mcfg.attention == "flash":  # a Triton kernel: a CUDA GPU, or Triton's interpreter
        try:
            import flash
            flash.check(device, torch.bfloat16 if uses_bf16(device, cfg.dtype) else torch.float32)
        except (ImportError, ValueError) as e:
            fail(f"--attention flash: {first_line(e)}")
    if cfg.loss_skip_bytes % mcfg.patch_size:
        fail(f"--loss_skip_bytes {cfg.loss_skip_bytes} is not a multiple of patch_size "
             f"{mcfg.patch_size}")
    try:
        model = build_model(cfg, mcfg, state, len(train_ds.classes or []))
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        fail(f"--init_from: {cfg.init_from} does not hold a model this code can build "
             f"({first_line(e)})")
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    step = 0
    if resumed:
        try:
            model.load_state_dict(resumed["model"])
            optimizer.load_state_dict(resumed["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            fail(f"--resume: {ckpt_path} does not fit this model ({first_line(e)})")
        for group in optimizer.param_groups:  # the state held the saved settings: flags win
            group["betas"] = (cfg.beta1, cfg.beta2)
        optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay  # (the matrices' group)
        step = resumed["step"]
        rngs = resumed["rng"]
        set_rng_state(rngs[rank] if len(rngs) == world else rngs[0], device)

    # What sample.py needs to know about the data: the class names and the usual extension.
    last = [s[-1] if isinstance(s, tuple) else s for s in train_ds.sources]
    ext = collections.Counter(file_ext(s) for s in last).most_common(1)[0][0]
    run = dict(cfg=cfg, mcfg=mcfg, model=model, optimizer=optimizer, changes=changes,
               step=step, train_ds=train_ds, eval_ds=eval_ds, device=device, rank=rank,
               world=world, ckpt_path=ckpt_path, resumed=resumed is not None,
               data_info={"classes": train_ds.classes, "ext": ext})
    return argparse.Namespace(**run)


# ---------------------------------------------------------------------------------------------
# The loop


def train(argv=None):
    """Train as the command line says; returns the last evaluation (and the baselines)."""
    run = setup(argv)
    cfg, model, device, step, world = run.cfg, run.model, run.device, run.step, run.world
    master = run.rank == 0
    if cfg.compile:
        compile_decoders(model)
    fwd = model  # what the step calls: the model itself, or the model wrapped by DDP
    if world > 1:  # DDP: every rank holds the whole model; gradients are averaged in backward
        fwd = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    batches = batch_loader(run.train_ds, cfg, step * cfg.grad_accum, run.rank, world, device)
    log = open_log(cfg.out_dir, step, run.resumed) if master else None
    if master:
        print_header(run)
    stop, result = StopSignal(), None
    bad = torch.zeros(2, device=device)  # (first step whose loss was not finite, that loss)
    model.train()
    t0, n_bytes = time.time(), 0
    try:
        while step < cfg.max_steps:
            loss, n = train_step(run, fwd, batches, step)
            n_bytes += n
            step += 1
            # The first non-finite loss and its step, noted on the device: no wait for the GPU.
            new = (bad[0] == 0) & ~loss.isfinite()
            bad = torch.where(new, torch.stack([torch.full_like(loss, step), loss]), bad)

            logging = step % cfg.log_interval == 0 or step == cfg.max_steps
            evaluating = step % cfg.eval_interval == 0 or step == cfg.max_steps
            stopping = any_rank(stop.received is not None, world, device)
            saving = evaluating or stopping or step % cfg.save_interval == 0
            if logging or saving:  # never log, evaluate or save a model gone non-finite
                check_finite(run, bad)
            if logging:
                loss = all_reduce(loss, world, device).item() / world  # the whole batch's
                if master:
                    log_step(log, cfg, step, loss, lr_at(step - 1, cfg), time.time() - t0,
                             n_bytes)
                t0, n_bytes = time.time(), 0
            paused = time.time()
            if evaluating:
                result = evaluate_and_log(run, log, step)
            if saving:
                save(run, step)
            t0 += time.time() - paused  # evaluation and saving are not training time
            if stopping:
                break
    except RunError as e:
        fail(str(e))
    finally:
        stop.restore()
    if stop.received is not None:
        if master:
            print(f"stopped at step {step}; checkpoint {run.ckpt_path}. Continue with: "
                  f"python train.py --resume --out_dir {cfg.out_dir}", file=sys.stderr)
        sys.exit(128 + stop.received)
    return finish(run, log, step, result)


def train_step(run, fwd, batches, step):
    """One optimizer step: grad_accum micro-batches forward and backward, then AdamW. Returns the
    step's mean loss, left on the device (reading it would make the CPU wait for the GPU), and
    the bytes it trained on, counted from the CPU's copy of the mask."""
    cfg, device = run.cfg, run.device
    loss = torch.zeros((), device=device)
    n_bytes = 0
    for micro in range(cfg.grad_accum):
        x, mask, labels = next(batches)
        if not cfg.classify and not mask[:, 1:].any():  # a mean over nothing: NaN, not the lr's
            raise RunError(f"step {step + 1}: an all-masked batch, no byte left to predict: "
                           f"--loss_skip_bytes {cfg.loss_skip_bytes} leaves out every patch of "
                           "its files (each must be longer than the skipped prefix)")
        n_bytes += int(mask.sum()) * run.mcfg.patch_size * run.world
        # Batches of files longer than the context have no padding: passing no mask then saves
        # the boolean indexing (each a wait for the GPU) and the copies a mask costs.
        mask = None if mask.all() else mask.to(device, non_blocking=True)
        x, labels = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        # DDP averages gradients across ranks in backward; between micro-steps of one optimizer
        # step that would be wasted traffic, so only the last one syncs.
        last = micro == cfg.grad_accum - 1
        with (nullcontext() if run.world == 1 or last else fwd.no_sync()), \
                autocast(device, cfg.dtype):
            if cfg.classify:
                _, micro_loss = fwd(x, mask, labels)
            else:  # the loss only: the model skips building the (B, T - P, 257) logits
                _, micro_loss = fwd(x, mask, return_logits=False)
        # Each micro-batch's loss is a mean; dividing by grad_accum makes the summed gradients
        # those of the mean over the step's whole batch.
        (micro_loss / cfg.grad_accum).backward()
        loss += micro_loss.detach() / cfg.grad_accum
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss, n_bytes


def check_finite(run, bad):
    """Stop if a step's loss was not finite on any process since the run began (bad: the first
    such step and its loss, kept on the device by the loop). The last checkpoint stays."""
    first = int(all_reduce(bad[:1].clone(), run.world, run.device, "max"))
    if first:
        value = float(bad[1]) if int(bad[0]) == first else "not finite"
        raise RunError(f"the loss became {value} at step {first}; the last good checkpoint "
                       f"({run.ckpt_path}) is kept. Try a lower --lr")


def print_header(run):
    cfg, mcfg = run.cfg, run.mcfg
    mode = "classify" if cfg.classify else f"convert {cfg.convert}" if cfg.convert else "generate"
    n_params = sum(p.numel() for p in run.model.parameters()) / 1e6
    print(f"{mode}: {len(run.train_ds)} train / {len(run.eval_ds)} held-out sequences, "
          f"{n_params:.2f}M parameters, context {mcfg.max_patches} patches x {mcfg.patch_size} "
          f"bytes, global batch {cfg.batch_size} x {cfg.grad_accum} x {run.world} processes, "
          f"{run.device}")
    if run.changes:
        print(f"resumed at step {run.step} with " + ", ".join(
            f"{k} {now} (was {was})" for k, (was, now) in run.changes.items()))


def log_step(log, cfg, step, loss, lr, dt, n_bytes):
    """One log line: the step's loss (and bits per byte), learning rate, time and throughput
    averaged since the last line."""
    steps_done = (step - 1) % cfg.log_interval + 1
    record = {"step": step, "loss": loss}
    if not cfg.classify:  # bits per byte: a code length of bytes, not of labels
        record["bpb"] = loss / math.log(2)
    record.update(lr=lr, ms_per_step=1000 * dt / steps_done, bytes_per_s=n_bytes / dt)
    write_log(log, record)
    bpb = f"bpb {record['bpb']:.3f} | " if "bpb" in record else ""
    print(f"step {step:5d} | loss {loss:.4f} | {bpb}lr {lr:.2e} | "
          f"{record['ms_per_step']:.0f} ms/step | {record['bytes_per_s']:,.0f} bytes/s", flush=True)


def finish(run, log, step, result):
    """After the last step: the final evaluation (when none ran: resumed at max_steps), the
    compressors on the same bytes, and the checkpoint's path."""
    if result is None:
        result = evaluate_and_log(run, log, step)
    if run.rank == 0:
        if "content_bpb" in result:
            base, line = compare_with_baselines(result["content_bpb"], run.train_ds, run.eval_ds)
            write_log(log, {"step": step, "baselines": base})
            print(line)
            result = {**result, **{f"{k}_bpb": v for k, v in base.items()}}
        log.close()
        print(f"checkpoint: {run.ckpt_path}")
    if run.world > 1:
        dist.destroy_process_group()
    return result


def open_log(out_dir, step, resumed):
    """log.jsonl: a new run starts a new log; a resumed run keeps the records up to its
    checkpoint's step (those after it were written by steps that are now done again)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "log.jsonl")
    kept = []
    if resumed and os.path.exists(path):
        for line in open(path):
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if (record.get("step") or 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    log = open(path, "w")
    log.writelines(kept)
    return log


def write_log(log, record):
    log.write(json.dumps(record) + "\n")
    log.flush()  # readable while training runs (a notebook may plot it)


if __name__ == "__main__":
    train()
