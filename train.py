"""
Train a bGPT model (arXiv:2402.19155) on a folder of files: generation, conversion or classification.

    python train.py                                       # default: this Python's standard library, ~10 min on 2 CPU cores
    python train.py --train_dir data/text/train --eval_dir data/text/test --max_patches 512
    python train.py --train_dir data/music/train --convert "abc->mid"
    python train.py --train_dir data/digits/train --classify --init_from out/ckpt.pt
    python train.py --resume --out_dir out                # continue exactly where a run stopped
    python train.py --help                                # every option, with its meaning

Every field of TrainConfig and of bgpt.BGPTConfig is a --flag. The run writes, into --out_dir,
ckpt.pt (model, optimizer, schedule, step, configs, RNG states; written atomically) and
log.jsonl (one JSON record per log line and per evaluation).
"""

import argparse
import collections
import functools
import inspect
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import torch
from tqdm import tqdm

from bgpt import BGPT, EOP, BGPTClassifier, BGPTConfig
from data import (ByteDataset, collate, compressed_bits_per_byte, conversion_pairs, decode, file_ext,
                  list_files, parse_convert, stdlib_files)

# ---------------------------------------------------------------------------------------------
# Config. The defaults train a small model on the stdlib in about 10 minutes on a 2-core CPU.


@dataclass
class TrainConfig:
    train_dir: str = ""  # folder of training files ("" = the .py files of this Python's stdlib)
    eval_dir: str = ""  # folder of held-out files ("" = a fixed fraction of the training files)
    eval_fraction: float = 0.05  # held-out share of the training files when there is no eval_dir
    out_dir: str = "out"  # where ckpt.pt and log.jsonl go
    convert: str = ""  # conversion mode: "abc->mid" trains one way, "abc&mid" both ways
    classify: bool = False  # classification mode: label = file name before the first "_"
    init_from: str = ""  # start from one of our checkpoints or a released .pth
    resume: bool = False  # continue the run in out_dir exactly (flags given now override its config)
    batch_size: int = 8  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (the loss is averaged over them)
    max_steps: int = 1800  # optimizer steps
    lr: float = 2e-3  # peak learning rate
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup_steps: int = 50  # linear warm-up from 0 to lr
    lr_decay_steps: int = 0  # length of the warm-up + cosine schedule (0 = max_steps)
    weight_decay: float = 0.1  # AdamW decay, on weight matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the gradient's global norm to this (0 = off)
    eval_interval: int = 500  # evaluate (and save a checkpoint) every this many steps
    eval_max_files: int = 200  # evaluate on at most this many held-out files (0 = all)
    log_interval: int = 50  # one log line every this many steps
    seed: int = 0  # seeds the model's initialisation, the data order and the crops
    device: str = "auto"  # auto = cuda, then mps, then cpu
    compile: bool = False  # torch.compile the model (faster steps on a GPU after a slow first one)


DEFAULT_MODEL = dict(max_patches=128, hidden_size=128, patch_layers=6, byte_layers=1, n_heads=2, dropout=0.0)
# 128 patches x 16 bytes = 2 KiB of context, 2.0M parameters. The byte decoder runs on every byte
# and the patch decoder on every 16th, so on a CPU a patch layer costs 1/16 of a byte layer: the
# default spends its FLOPs on a deeper patch decoder. Model fields not given on the command line
# take these values, which fit the 10-minute CPU default; --hidden_size 768 --patch_layers 12
# --byte_layers 3 --n_heads 12 --max_patches 512 is the paper's model.


def parse_args(argv=None):
    """Build one --flag per config field. Returns (TrainConfig, BGPTConfig fields, flags given)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="python train.py [--name value ...]   (python train.py --help lists them)")
    for cls, title in [(TrainConfig, "training"), (BGPTConfig, "model (bgpt.BGPTConfig)")]:
        group = parser.add_argument_group(title)
        for f in fields(cls):
            default = DEFAULT_MODEL.get(f.name, f.default) if cls is BGPTConfig else f.default
            kind = {bool: _bool, int: int, float: float, str: str}[type(f.default)]
            group.add_argument(f"--{f.name}", type=kind, default=argparse.SUPPRESS, metavar=type(f.default).__name__,
                               nargs="?" if kind is _bool else None, const=True if kind is _bool else None,
                               help=f"{_field_help(cls, f.name)} (default: {default})")
    given = vars(parser.parse_args(argv))  # only the flags actually typed (defaults are suppressed)
    train_fields = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in given.items() if k in train_fields})
    model_fields = {**DEFAULT_MODEL, **{k: v for k, v in given.items() if k not in train_fields}}
    return cfg, model_fields, set(given)


def _bool(s):
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _field_help(cls, name):
    """The comment after the field in its source: the dataclasses document their own flags."""
    for line in inspect.getsource(cls).splitlines():
        if line.strip().startswith(f"{name}:") and "#" in line:
            return line.split("#", 1)[1].strip()
    return ""


def fail(message):
    """A clear one-line error and exit code 2 (as argparse does for a bad flag)."""
    print(f"train.py: error: {message}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------
# Device


def pick_device(name):
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device):
    """bf16 autocast on CUDA (matmuls run on tensor cores; weights and optimizer stay fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# ---------------------------------------------------------------------------------------------
# Data


def load_data(cfg, mcfg):
    """Returns (train, held-out) ByteDatasets for the chosen mode."""
    P, N = mcfg.patch_size, mcfg.max_patches
    exts = None
    if cfg.convert:
        exts = {e for pair in parse_convert(cfg.convert) for e in pair}
    if cfg.train_dir:
        train_files = list_files(cfg.train_dir, exts)
        if cfg.eval_dir:
            eval_files = list_files(cfg.eval_dir, exts)
        else:  # every k-th name, a fixed choice that keeps conversion pairs (x.abc, x.mid) together
            k = max(2, round(1 / cfg.eval_fraction))
            held = set(sorted({f.with_suffix("") for f in train_files})[::k])
            eval_files = [f for f in train_files if f.with_suffix("") in held]
            train_files = [f for f in train_files if f.with_suffix("") not in held]
    else:
        train_files, eval_files = stdlib_files(cfg.eval_fraction)
    if cfg.convert:
        train_src, eval_src = conversion_pairs(train_files, cfg.convert), conversion_pairs(eval_files, cfg.convert)
    else:
        train_src, eval_src = train_files, eval_files
    if cfg.eval_max_files and len(eval_src) > cfg.eval_max_files:  # evenly spaced: files sorted by
        eval_src = eval_src[::len(eval_src) // cfg.eval_max_files][:cfg.eval_max_files]  # label keep every label
    train = ByteDataset(train_src, N, P, crop_mode="random", labels=True if cfg.classify else None, seed=cfg.seed)
    held_out = ByteDataset(eval_src, N, P, crop_mode="head", labels=train.classes)
    if cfg.classify and len(train.classes) < 2:
        fail(f"classification needs at least 2 labels (file name before the first '_'), found {train.classes}")
    return train, held_out


def get_batch(dataset, cfg, micro_step, P):
    """The micro-batch number micro_step, a pure function of (seed, micro_step): the data order is
    a fresh permutation per epoch and each item's crop is seeded by its place in the stream, so
    a resumed run sees exactly the batches the uninterrupted run would have seen."""
    items = []
    for j in range(micro_step * cfg.batch_size, (micro_step + 1) * cfg.batch_size):
        epoch, k = divmod(j, len(dataset))
        dataset.rng.seed(cfg.seed * 1_000_003 + j)
        items.append(dataset[epoch_order(len(dataset), cfg.seed, epoch)[k]])
    return collate(items, P)


@functools.lru_cache(maxsize=2)
def epoch_order(n, seed, epoch):
    """The order of the n training items in this epoch (cached: one permutation per epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()


# ---------------------------------------------------------------------------------------------
# Model


def build_model(cfg, model_fields, n_classes):
    """A new model, or one initialised from --init_from (ours or a released .pth)."""
    if not cfg.init_from:
        mcfg = BGPTConfig(**model_fields)
        return (BGPTClassifier(mcfg, n_classes) if cfg.classify else BGPT(mcfg)), mcfg
    if not os.path.isfile(cfg.init_from):
        fail(f"--init_from: no such file: {cfg.init_from}")
    ckpt = load_checkpoint(cfg.init_from, "--init_from")
    # The architecture comes from the checkpoint; only these may differ from it.
    free = {k: v for k, v in model_fields.items() if k in ("dropout", "attention", "byte_patches")}
    if "config" in ckpt:  # one of ours
        mcfg = BGPTConfig(**{**ckpt["config"]["model"], **free})
        if cfg.classify:
            return BGPTClassifier(mcfg, n_classes).load_patch_decoder(ckpt["model"]), mcfg
        model = BGPT(mcfg)
        model.load_state_dict(ckpt["model"])
        return model, mcfg
    model = (BGPTClassifier.from_official(ckpt, n_classes, **free) if cfg.classify
             else BGPT.from_official(ckpt, **free))
    return model, model.config


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule


def make_optimizer(model, cfg):
    """AdamW; weight decay on matrices and embedding tables only (not on biases and LayerNorms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lr_factor(step, cfg):
    """Linear warm-up, then cosine decay to min_lr; a factor of cfg.lr for LambdaLR."""
    total = cfg.lr_decay_steps or cfg.max_steps
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return (cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))) / cfg.lr


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model, dataset, device, batch_size=8, content=True):
    """Held-out figures. loss and bpb are the release's: mean cross-entropy over every predicted id
    (padding and end patch included) and that over ln 2. content_bpb is a code length: the bits
    the model gives each file's content bytes plus the EOP that ends them (when the file fits the
    context), over the content bytes; a compressor's bits per byte on the same bytes compare."""
    model.eval()
    P = model.config.patch_size
    sums = dict(nll=0.0, ids=0, bits=0.0, bytes=0, correct=0, n=0)
    for start in range(0, len(dataset), batch_size):
        x, mask, labels = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))], P)
        x, mask, labels = x.to(device), mask.to(device), labels.to(device)
        with autocast(device):
            if isinstance(model, BGPTClassifier):
                logits, _ = model(x, mask)
                sums["correct"] += int((logits.argmax(-1) == labels).sum())
                sums["n"] += len(labels)
                continue
            logits, _ = model(x, mask)
        nll = -logits.float().log_softmax(-1).gather(-1, x[:, P:, None])[..., 0]  # (B, T - P)
        keep = mask[:, 1:].repeat_interleave(P, 1).bool()
        sums["nll"] += float(nll[keep].sum())
        sums["ids"] += int(keep.sum())
        if content:
            for row, ids in zip(nll, x[:, P:].tolist()):
                n = ids.index(EOP) if EOP in ids else len(ids)  # content bytes in the window
                sums["bits"] += float(row[:min(n + 1, len(ids))].sum()) / math.log(2)
                sums["bytes"] += n
    model.train()
    if isinstance(model, BGPTClassifier):
        return {"accuracy": sums["correct"] / max(sums["n"], 1)}
    out = {"loss": sums["nll"] / sums["ids"], "bpb": sums["nll"] / sums["ids"] / math.log(2)}
    if content:
        out["content_bpb"] = sums["bits"] / max(sums["bytes"], 1)
    return out


def baselines(dataset):
    """gzip -9, bz2 and lzma on exactly the content the model was evaluated on, file by file."""
    contents = [decode(dataset.ids(i), dataset.patch_size) for i in range(len(dataset))]
    return {m: compressed_bits_per_byte(contents, m) for m in ("gzip", "bz2", "lzma")}


# ---------------------------------------------------------------------------------------------
# Checkpointing


def save_checkpoint(path, **state):
    """Write to a temporary file, then rename: a crash mid-write never destroys the last checkpoint."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, flag):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which, not where torch failed
        fail(f"{flag}: {path} is not a readable checkpoint ({type(e).__name__})")


def rng_state():
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# The loop


def train(argv=None):
    cfg, model_fields, given = parse_args(argv)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    resumed = None
    if cfg.resume:
        if not os.path.isfile(ckpt_path):
            fail(f"--resume: no checkpoint at {ckpt_path}")
        resumed = load_checkpoint(ckpt_path, "--resume")
        saved = resumed["config"]
        cfg = TrainConfig(**{**saved["train"], **{k: getattr(cfg, k) for k in given if hasattr(cfg, k)}})
        model_fields = {**saved["model"], **{k: model_fields[k] for k in given if k in model_fields}}
        cfg.init_from = ""  # the weights come from the checkpoint
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    try:
        P = BGPTConfig(**model_fields).patch_size
        train_ds, eval_ds = load_data(cfg, BGPTConfig(**model_fields))
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    try:
        model, mcfg = build_model(cfg, model_fields, len(train_ds.classes or []))
    except ValueError as e:
        fail(f"{cfg.init_from or 'model'}: {e}")
    if mcfg.max_patches != train_ds.max_patches:  # an --init_from checkpoint sets the context
        train_ds.max_patches = eval_ds.max_patches = mcfg.max_patches
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    step = 0
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        step = resumed["step"]
        set_rng_state(resumed["rng"])
    fwd = torch.compile(model) if cfg.compile else model
    os.makedirs(cfg.out_dir, exist_ok=True)
    log = open(os.path.join(cfg.out_dir, "log.jsonl"), "a" if resumed else "w")  # a new run, a new log
    config = {"train": asdict(cfg), "model": asdict(mcfg)}
    # What sample.py needs to know about the data: the class names and the usual extension.
    exts = collections.Counter(file_ext(s[-1] if isinstance(s, tuple) else s) for s in train_ds.sources)
    data_info = {"classes": train_ds.classes, "ext": exts.most_common(1)[0][0]}
    mode = "classify" if cfg.classify else f"convert {cfg.convert}" if cfg.convert else "generate"
    print(f"{mode}: {len(train_ds)} train / {len(eval_ds)} held-out sequences, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"context {mcfg.max_patches} patches x {mcfg.patch_size} bytes, device {device}")

    def checkpoint():
        save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), step=step, config=config, rng=rng_state(), data=data_info)

    def run_eval():
        result = evaluate(model, eval_ds, device, cfg.batch_size, content=not cfg.convert)
        record = {"step": step, "eval": result}
        log.write(json.dumps(record) + "\n")
        log.flush()
        tqdm.write(f"step {step:5d} | held-out " + " | ".join(f"{k} {v:.4f}" for k, v in result.items()))
        return result

    model.train()
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", dynamic_ncols=True, mininterval=2)
    t0, n_bytes, result = time.time(), 0, None
    while step < cfg.max_steps:
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            x, mask, labels = get_batch(train_ds, cfg, step * cfg.grad_accum + micro, P)
            x, mask, labels = x.to(device), mask.to(device), labels.to(device)
            with autocast(device):
                _, loss = fwd(x, mask, labels) if cfg.classify else fwd(x, mask)
            # Each micro-batch's loss is already a mean; dividing by grad_accum makes the summed
            # gradients the gradient of the mean over the whole step's batch.
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
            n_bytes += int(mask.sum()) * P
        if not math.isfinite(loss_sum):
            fail(f"loss became {loss_sum} at step {step}; try a lower --lr")
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            dt = time.time() - t0
            steps_done = (step - 1) % cfg.log_interval + 1
            record = {"step": step, "loss": loss_sum, "bpb": loss_sum / math.log(2), "lr": scheduler.get_last_lr()[0],
                      "ms_per_step": 1000 * dt / steps_done, "bytes_per_s": n_bytes / dt}
            log.write(json.dumps(record) + "\n")
            log.flush()  # readable while training runs (a notebook may plot it)
            tqdm.write(f"step {step:5d} | loss {loss_sum:.4f} | bpb {record['bpb']:.3f} | lr {record['lr']:.2e} | "
                       f"{record['ms_per_step']:.0f} ms/step | {record['bytes_per_s']:,.0f} bytes/s")
            t0, n_bytes = time.time(), 0
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            result = run_eval()
            checkpoint()
            t0 = time.time()  # evaluation time is not training time
    bar.close()
    if result is None:  # nothing left to train (resumed at max_steps)
        result = run_eval()
    if "content_bpb" in result:
        base = baselines(eval_ds)
        log.write(json.dumps({"step": step, "baselines": base}) + "\n")
        saving = 1 - result["content_bpb"] / base["lzma"]
        print(f"held-out content: model {result['content_bpb']:.3f} bits/byte | gzip -9 {base['gzip']:.3f} | "
              f"bz2 {base['bz2']:.3f} | lzma {base['lzma']:.3f} | {abs(100 * saving):.0f}% {'fewer' if saving >= 0 else 'more'} bits than lzma")
        result = {**result, **{f"{k}_bpb": v for k, v in base.items()}}
    log.close()
    print(f"checkpoint: {ckpt_path}")
    return result


if __name__ == "__main__":
    train()
