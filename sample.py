"""
Use a trained bGPT model (arXiv:2402.19155): generate, continue, convert, classify, simulate a CPU.

    python sample.py                                        # a few files from out/ckpt.pt (the default run)
    python sample.py --ext txt --num_samples 4 --top_p 0.9  # new files of a type
    python sample.py --prompt some_file.py                  # continue a file
    python sample.py --convert data/music/test --to mid     # write x.mid for every x.abc (etc.) of a folder
    python sample.py --classify data/digits/test            # label files with a classifier checkpoint
    python sample.py --simulate data/cpu/test               # CPU traces: memory + first state in, the rest out
    python sample.py --ckpt official:weights-text.pth       # any of the released checkpoints

Outputs go to --out_dir; the script prints what it wrote and how many bytes per second it generated.
"""

import argparse
import collections
import os
import sys
import time
from pathlib import Path

import torch

import cpu
from bgpt import BGPT, EOP, BGPTClassifier, BGPTConfig
from data import ByteDataset, collate, decode, encode, file_ext, label_of, list_files
from train import autocast, pick_device


def fail(message):
    print(f"sample.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def load(ckpt, device):
    """Returns (model, info): info holds the training data's extension and classes when known."""
    official = ckpt.startswith("official:")
    path = ckpt[len("official:"):] if official else ckpt
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path}" + (" (train one with: python train.py)" if not official else ""))
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if official or "config" not in state:
            return BGPT.from_official(state).to(device).eval(), {}
    except Exception as e:  # not a checkpoint, or not in the released layout
        fail(f"{path}: {e if isinstance(e, ValueError) else 'not a readable checkpoint'}")
    config = BGPTConfig(**state["config"]["model"])
    info = state.get("data", {})
    model = BGPTClassifier(config, len(info["classes"])) if state["config"]["train"]["classify"] else BGPT(config)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), info


def generate(model, prompts, args, device, max_new_bytes=None):
    """prompts: (B, T0) ids. Returns the new ids as one list per row and the bytes/s reached."""
    g = torch.Generator(device=device).manual_seed(args.seed)
    t0 = time.time()
    with autocast(device):
        new = model.generate(prompts.to(device), max_new_bytes or args.max_new_bytes, args.temperature,
                             args.top_k, args.top_p, generator=g)
    dt = time.time() - t0
    rows = new.tolist()
    made = sum((r.index(EOP) + 1 if EOP in r else len(r)) for r in rows)
    return rows, made / dt


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------------------------
# The tasks


def sample_files(model, info, args, device):
    P = model.config.patch_size
    if args.prompt:
        ext = file_ext(args.prompt)
        ids = encode(Path(args.prompt).read_bytes(), ext, P)[:-P]  # no end patch: the file goes on
        while ids and ids[-1] == EOP:  # nor the padding of its last patch
            ids.pop()
        room = model.config.max_patches * P - args.max_new_bytes
        ids = ids[:P] + ids[P:][-max(room - P, 0):] if len(ids) > room else ids  # keep the header
    else:
        ext = args.ext or info.get("ext", "txt")
        ids = encode(b"", ext, P)[:P]  # the header patch alone: "a new .ext file"
    prompts = torch.tensor([ids] * args.num_samples)
    rows, speed = generate(model, prompts, args, device)
    prefix = decode(ids + [EOP], P)
    for i, row in enumerate(rows):
        content = prefix + decode([0] * P + row, P)
        path = write(Path(args.out_dir) / f"sample_{i}.{ext}", content)
        text = content.decode("utf-8", errors="replace")
        print(f"--- {path} ({len(content)} bytes)")
        print(text[:args.show_chars] + ("..." if len(text) > args.show_chars else ""))
    print(f"generated at {speed:,.0f} bytes/s")


def convert(model, args, device):
    """For every file of the folder whose extension is not --to: write the model's --to version."""
    P = model.config.patch_size
    files = [f for f in list_files(args.convert) if file_ext(f) != args.to]
    speeds, exact, compared = [], 0, 0
    for f in files:
        ids = encode(f.read_bytes(), file_ext(f), P)[:-P] + encode(b"", args.to, P)[:P]  # input, then target header
        room = model.config.max_patches * P - len(ids)
        if room <= 0:
            print(f"skip {f}: {len(ids) // P} patches leave no room in a {model.config.max_patches}-patch context")
            continue
        rows, speed = generate(model, torch.tensor([ids]), args, device, min(args.max_new_bytes, room))
        speeds.append(speed)
        out = write(Path(args.out_dir) / f.with_suffix("." + args.to).name, decode([0] * P + rows[0], P))
        truth = f.with_suffix("." + args.to)
        if truth.exists():  # the folder holds the real target: count exact matches
            compared += 1
            exact += truth.read_bytes() == out.read_bytes()
    print(f"converted {len(speeds)} files into {args.out_dir} at {sum(speeds) / max(len(speeds), 1):,.0f} bytes/s")
    if compared:
        print(f"byte-identical to the folder's own .{args.to} files: {exact}/{compared}")


def classify(model, info, args, device):
    files = list_files(args.classify)
    classes = info["classes"]
    ds = ByteDataset(files, model.config.max_patches, model.config.patch_size, labels=classes)
    correct = 0
    for start in range(0, len(files), 16):
        x, mask, labels = collate([ds[i] for i in range(start, min(start + 16, len(files)))], model.config.patch_size)
        with torch.no_grad(), autocast(device):
            logits, _ = model(x.to(device), mask.to(device))
        for f, p, y in zip(files[start:start + 16], logits.argmax(-1).tolist(), labels.tolist()):
            correct += p == y
            print(f"{f.name}\t{classes[p]}")
    known = sum(label_of(f) in classes for f in files)
    if known:
        print(f"accuracy {correct / known:.4f} on {known} files whose names carry a known label")


def simulate(model, args, device, files=None):
    """Give the model each trace's memory and initial state, let it write the rest greedily, and
    score it against the real trace: byte accuracy over the generated states, whole-state
    accuracy, and state accuracy grouped by the opcode whose execution produced the state."""
    P = model.config.patch_size
    S = cpu.STATE_HEADER + args.num_registers  # bytes per state
    given = args.memory_size + S  # memory and the initial state
    if given % P:
        fail(f"memory ({args.memory_size}) + one state ({S}) must fill whole {P}-byte patches")
    files = files or list_files(args.simulate, {"bin"})
    stats = collections.Counter()
    by_op = collections.defaultdict(lambda: [0, 0])
    t0, made = time.time(), 0
    for f in files:
        trace = f.read_bytes()
        prompt = encode(trace, "bin", P)[:P + given]
        with autocast(device):
            new = model.generate(torch.tensor([prompt], device=device), len(trace) - given + 1, top_k=1)[0].tolist()
        made += len(new)
        out = decode([0] * P + new, P)
        truth = trace[given:]
        out = out[:len(truth)].ljust(len(truth), b"\0")  # a short answer counts as wrong bytes
        stats["bytes"] += len(truth)
        stats["bytes_ok"] += sum(a == b for a, b in zip(out, truth))
        prev_ir = trace[args.memory_size + 2]  # opcode in the initial state's IR
        for k in range(0, len(truth), S):
            ok = out[k:k + S] == truth[k:k + S]
            op = cpu.OPCODE_NAMES[prev_ir] if k else "fetch"  # the first state only fetched
            by_op[op][0] += ok
            by_op[op][1] += 1
            stats["states"] += 1
            stats["states_ok"] += ok
            prev_ir = truth[k + 2]
    dt = time.time() - t0
    result = {"byte_accuracy": stats["bytes_ok"] / max(stats["bytes"], 1),
              "state_accuracy": stats["states_ok"] / max(stats["states"], 1),
              "by_opcode": {op: ok / n for op, (ok, n) in sorted(by_op.items())},
              "bytes_per_s": made / dt}
    print(f"{len(files)} traces: byte accuracy {result['byte_accuracy']:.4f}, state accuracy {result['state_accuracy']:.4f}, "
          f"{result['bytes_per_s']:,.0f} bytes/s")
    print("state accuracy by opcode: " + ", ".join(f"{op} {acc:.3f}" for op, acc in result["by_opcode"].items()))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="out/ckpt.pt", help="our checkpoint, or official:PATH for a released .pth")
    p.add_argument("--out_dir", default="samples", help="where generated and converted files go")
    p.add_argument("--ext", default="", help="extension of new files (default: the training data's)")
    p.add_argument("--num_samples", type=int, default=3, help="files to generate (one batch)")
    p.add_argument("--prompt", default="", help="continue this file instead of starting new ones")
    p.add_argument("--convert", default="", metavar="DIR", help="convert every file of DIR to --to")
    p.add_argument("--to", default="", help="target extension for --convert, e.g. mid")
    p.add_argument("--classify", default="", metavar="DIR", help="label every file of DIR (classifier checkpoint)")
    p.add_argument("--simulate", default="", metavar="DIR", help="simulate the .bin CPU traces of DIR")
    p.add_argument("--memory_size", type=int, default=cpu.MEMORY_SIZE, help="CPU memory bytes of the traces")
    p.add_argument("--num_registers", type=int, default=cpu.NUM_REGISTERS, help="CPU registers of the traces")
    p.add_argument("--max_new_bytes", type=int, default=2048, help="stop a file after this many bytes")
    p.add_argument("--temperature", type=float, default=1.0, help="divide the logits by this (0 = greedy)")
    p.add_argument("--top_k", type=int, default=None, help="sample among the k most likely bytes (1 = greedy)")
    p.add_argument("--top_p", type=float, default=None, help="sample among the most likely bytes that cover p")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    p.add_argument("--show_chars", type=int, default=600, help="print at most this much of each sample")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = p.parse_args(argv)
    for flag in ("prompt",):
        if getattr(args, flag) and not os.path.isfile(getattr(args, flag)):
            p.error(f"--{flag}: no such file: {getattr(args, flag)}")
    for flag in ("convert", "classify", "simulate"):
        if getattr(args, flag) and not os.path.isdir(getattr(args, flag)):
            p.error(f"--{flag}: no such folder: {getattr(args, flag)}")
    if args.convert and not args.to:
        p.error("--convert needs --to EXT")
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    model, info = load(args.ckpt, device)
    if isinstance(model, BGPTClassifier) != bool(args.classify):
        p.error("--classify needs a classifier checkpoint (train.py --classify), and only it does")
    try:
        if args.convert:
            convert(model, args, device)
        elif args.classify:
            classify(model, info, args, device)
        elif args.simulate:
            simulate(model, args, device)
        else:
            sample_files(model, info, args, device)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))


if __name__ == "__main__":
    main()
