"""
Use a trained bGPT model (arXiv:2402.19155): generate, continue, convert, classify, simulate a CPU,
and compress files with it (arithmetic coding: coder.py).

    python sample.py                                       # new files from out/ckpt.pt
    python sample.py --ext txt --num_samples 4 --top_p 0.9  # new files of a type
    python sample.py --prompt FILE                          # continue a file (of any length)
    python sample.py --convert data/abc-midi/test --to mid  # x.mid for each x.abc (etc.) there
    python sample.py --classify data/digits/test            # label files (classifier checkpoint)
    python data.py cpu --out data/cpu --count 1000          # CPU traces in the release's format
    python sample.py --simulate data/cpu/test               # run them, score against rules
    python sample.py --simulate data/cpu/test --json r.json # ... and keep every figure
    python sample.py --ckpt official:weights-text.pth       # any of the released checkpoints
    python sample.py --compress FILE --output FILE.bgpt     # arithmetic coding with the model
    python sample.py --decompress FILE.bgpt --output COPY   # the same model restores FILE

Outputs go to --out_dir; the script prints what it wrote and how many bytes per second it made.
Each task is a function with keyword arguments, so a notebook runs the same code:

    model, info = sample.load_model("out/ckpt.pt")
    sample.sample_files(model, out_dir="samples", ext="py", num_samples=2, top_p=0.9)
    sample.simulate(model, files, memory_size=64, num_registers=10)
    archive = sample.compress(model, content, "txt")  # and back: sample.decompress(model, archive)
"""

import argparse
import collections
import json
import os
import time
from pathlib import Path

import torch

import cpu
from bgpt import BGPT, EOP, BGPTClassifier, BGPTConfig
from coder import compress, decompress  # noqa: F401 (sample.compress, sample.decompress)
from data import ByteDataset, HelpFormatter, collate, decode, encode, fail, file_ext, label_of, \
    list_files
from devices import autocast, pick_device
from train import first_line, is_ours, load_checkpoint

# ---------------------------------------------------------------------------------------------
# Loading a model


def load_model(path, device="cpu", what="--ckpt", attention=""):
    """(model, info) from our checkpoint, or from a released .pth given as "official:PATH".
    info has the training data's "ext" and "classes" (empty for a released checkpoint).
    attention: the core to compute with ('' = the checkpoint's): a model trained with 'flash' on
    a GPU samples with 'sdpa' on a CPU, the same function."""
    device = torch.device(device)
    if attention == "flash":  # a Triton kernel: a CUDA GPU, or Triton's interpreter (in fp32)
        try:
            import flash
            flash.check(device, torch.float32)
        except (ImportError, ValueError) as e:
            fail(f"--attention flash: {first_line(e)}")
    overrides = {"attention": attention} if attention else {}
    official = path.startswith("official:")
    path = path[len("official:"):] if official else path
    state = load_checkpoint(path, what)
    if official and is_ours(state):
        fail(f"{what}: {path} is one of this project's checkpoints: drop the 'official:' prefix")
    if not official and not is_ours(state):
        fail(f"{what}: {path} is not one of this project's checkpoints"
             " (a released bGPT .pth is read as official:PATH)")
    try:
        if official:
            return BGPT.from_official(state, **overrides).to(device).eval(), {}
        config = BGPTConfig(**{**state["config"]["model"], **overrides})
        info = state.get("data", {})
        classify = state["config"]["train"]["classify"]
        model = BGPTClassifier(config, len(info["classes"])) if classify else BGPT(config)
        model.load_state_dict(state["model"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        fail(f"{what}: {path} does not hold a model this code can build ({first_line(e)})")
    return model.to(device).eval(), info


# ---------------------------------------------------------------------------------------------
# Generation


def generate(model, prompts, max_new_bytes, *, temperature=1.0, top_k=None, top_p=None, seed=0):
    """Continue prompts: (B, T0) ids (a tensor, or B lists of one length), a header patch first,
    on the model's device. Returns (rows, bytes_per_s): rows is B lists of new ids, all of one
    length (at most max_new_bytes); a row that stopped early ends with its EOP and EOP padding."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.as_tensor(prompts, dtype=torch.long).to(device)
    t0 = time.perf_counter()
    # In the weights' dtype (fp32), not under bf16 autocast: autocast casts every weight it
    # multiplies again at every step, which at a step's small batch costs more than bf16 saves.
    new = model.generate(x, max_new_bytes, temperature=temperature, top_k=top_k, top_p=top_p,
                         generator=g)
    dt = time.perf_counter() - t0
    rows = new.tolist()
    made = sum((r.index(EOP) + 1 if EOP in r else len(r)) for r in rows)  # padding is not made
    return rows, made / max(dt, 1e-9)


def prompt_ids(content, ext, config, max_new_bytes):
    """The ids that continue `content` (a file's bytes, of any length): the header patch, then
    as much of the content's end as leaves room for max_new_bytes in the context. Returns (ids,
    n_new): n_new is max_new_bytes, or fewer when one patch of prompt and max_new_bytes do not
    fit together.

    Whole patches are cut from the front, so the kept bytes sit on the file's own patch grid, the
    grid every training crop keeps (a WAV or a BMP repeats its structure on that grid)."""
    P = config.patch_size
    room = (config.max_patches - 1) * P  # content ids beside the header: the prompt's and the new
    n = len(content)
    latest = P * ((n - min(n, P)) // P)  # the latest start that keeps one patch of the prompt
    start = min(P * -(-max(n - (room - max_new_bytes), 0) // P), latest)  # ceil to a patch start
    n_new = min(max_new_bytes, room - (n - start))
    if n_new < 1:
        raise ValueError(f"a {config.max_patches}-patch context leaves no room for new bytes "
                         f"after the header and {n - start} bytes of prompt")
    return encode(b"", ext, P)[:P] + list(content[start:]), n_new


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------------------------
# The tasks. Each prints what it did and returns it; it runs on the model's device.


def sample_files(model, *, out_dir, ext="txt", num_samples=3, prompt=None, max_new_bytes=2048,
                 temperature=1.0, top_k=None, top_p=None, seed=0, show_chars=600):
    """Write num_samples files out_dir/sample_<i>.<ext>: new .ext files from the header patch
    alone, or with prompt (a file's path) that file continued: its extension replaces ext, and
    each written file is the whole prompt file, then the new bytes. Returns the paths."""
    P, N = model.config.patch_size, model.config.max_patches
    content = b""
    if prompt is not None:
        content, ext = Path(prompt).read_bytes(), file_ext(prompt)
    ids, n_new = prompt_ids(content, ext, model.config, max_new_bytes)
    seen = len(ids) - P
    if seen < len(content):
        print(f"prompt: the model sees the last {seen:,} of its {len(content):,} bytes")
    if n_new < max_new_bytes:
        print(f"max_new_bytes: {n_new:,} instead of {max_new_bytes:,}, all the {N}-patch context "
              f"holds beside the header and {seen:,} bytes of prompt")
    rows, speed = generate(model, [ids] * num_samples, n_new, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=seed)
    paths = []
    for i, row in enumerate(rows):
        new = decode([EOP] * P + row, P)  # up to the first EOP
        name = f"sample_{i}" + (f".{ext}" if ext else "")
        paths.append(write(Path(out_dir) / name, content + new))
        text = new.decode("utf-8", errors="replace")
        print(f"--- {paths[-1]} ({len(content):,} prompt + {len(new):,} new bytes)")
        print(text[:show_chars] + ("..." if len(text) > show_chars else ""))
    print(f"generated at {speed:,.0f} bytes/s")
    return paths


def convert(model, folder, to, *, out_dir, max_new_bytes=None, temperature=1.0, top_k=None,
            top_p=None, seed=0):
    """For every file of folder whose extension is not `to`, write the model's `to` version to
    out_dir (same name, extension `to`): the model reads the input file without its end patch,
    then the header patch of `to`, and writes the rest. max_new_bytes None: all the context
    holds. Where folder has the real x.<to>, outputs that match it byte for byte are counted.
    Returns {"converted", "exact", "compared", "bytes_per_s"}."""
    P, N = model.config.patch_size, model.config.max_patches
    files = [f for f in list_files(folder) if file_ext(f) != to]
    if not files:
        raise FileNotFoundError(f"{folder} holds no file to convert to .{to}")
    speeds, exact, compared = [], 0, 0
    for f in files:
        ids = encode(f.read_bytes(), file_ext(f), P)[:-P] + encode(b"", to, P)[:P]
        room = N * P - len(ids)
        if room <= 0:
            print(f"skip {f}: {len(ids) // P} patches leave no room in a {N}-patch context")
            continue
        n_new = room if max_new_bytes is None else min(max_new_bytes, room)
        rows, speed = generate(model, [ids], n_new, temperature=temperature, top_k=top_k,
                               top_p=top_p, seed=seed)
        speeds.append(speed)
        out = write(Path(out_dir) / f.with_suffix("." + to).name, decode([EOP] * P + rows[0], P))
        truth = f.with_suffix("." + to)
        if truth.exists():
            compared += 1
            exact += truth.read_bytes() == out.read_bytes()
    result = {"converted": len(speeds), "exact": exact, "compared": compared,
              "bytes_per_s": sum(speeds) / max(len(speeds), 1)}
    print(f"converted {len(speeds)} files into {out_dir} at {result['bytes_per_s']:,.0f} bytes/s")
    if compared:
        print(f"byte-identical to the folder's own .{to} files: {exact}/{compared}")
    return result


@torch.no_grad()
def classify(model, classes, folder, batch_size=16):
    """Label every file of folder with a classifier; classes are the label names (the
    checkpoint's info["classes"]). The accuracy counts the files whose name carries one of the
    labels ("Business_12.txt"), None if none does. Returns {"predictions": [(file name,
    label)], "accuracy"}."""
    device = next(model.parameters()).device
    P = model.config.patch_size
    files = list_files(folder)
    ds = ByteDataset(files, model.config.max_patches, P, labels=classes)
    predictions, correct = [], 0
    for start in range(0, len(files), batch_size):
        x, mask, labels = collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))],
                                  P)
        with autocast(device):
            logits, _ = model(x.to(device), mask.to(device))
        for f, p, y in zip(files[start:], logits.argmax(-1).tolist(), labels.tolist()):
            correct += p == y
            predictions.append((f.name, classes[p]))
            print(f"{f.name}\t{classes[p]}")
    known = sum(label_of(f) in classes for f in files)
    accuracy = correct / known if known else None
    if known:
        print(f"accuracy {accuracy:.4f} on {known} files whose names carry a known label")
    return {"predictions": predictions, "accuracy": accuracy}


# CPU simulation. A trace is memory, then states S_0, S_1, ... (cpu.py): S_k is the machine after
# fetching instruction k-1 and executing instruction k-2, which S_{k-1} holds in its IR. So
# S_k from S_{k-1} takes three things: advance PC, fetch from memory, execute. The "computed"
# bytes of S_k are those cpu.fetch_rule gets wrong from the true S_{k-1}: what executing wrote.
# Every method is scored on the same states S_1.. of the same traces.
METHODS = ("model", "copy", "copy_fetch")
MODES = ("one_step", "free")
RULES = {"copy": cpu.copy_rule, "copy_fetch": cpu.fetch_rule}


def read_traces(files, memory_size, num_registers):
    """[(memory, [S_0, S_1, ...])] as bytes; a ValueError names a file that is not a trace of
    these sizes."""
    S = cpu.STATE_HEADER + num_registers
    traces = []
    for f in files:
        trace = Path(f).read_bytes()
        if len(trace) < memory_size + 2 * S or (len(trace) - memory_size) % S:
            raise ValueError(f"{f}: {len(trace)} bytes are not a trace of {memory_size} memory "
                             f"bytes and two or more {S}-byte states (see --memory_size and "
                             "--num_registers)")
        body = trace[memory_size:]
        traces.append((trace[:memory_size], [body[i:i + S] for i in range(0, len(body), S)]))
    return traces


@torch.no_grad()
def model_one_step(model, files, traces, batch_size=16):
    """Teacher forcing: one forward pass over each true trace; the argmax at each byte of S_1..
    is the model's guess from every true byte before it. Returns the guessed S_1.. per trace
    (a guess of EOP is never right)."""
    device = next(model.parameters()).device
    P = model.config.patch_size
    guesses, pairs = [], list(zip(files, traces))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        ids = [encode(memory + b"".join(states), file_ext(f), P)[:-P]  # no end patch needed
               for f, (memory, states) in chunk]
        x, mask, _ = collate([(torch.tensor(i), -1) for i in ids], P)
        with autocast(device):
            logits, _ = model(x.to(device), mask.to(device))  # (B, T - P, V)
        best = logits.argmax(-1).tolist()  # column c: the guess for content byte c
        for row, (f, (memory, states)) in zip(best, chunk):
            S = len(states[0])
            guessed = row[len(memory) + S:len(memory) + S * len(states)]
            guesses.append([guessed[i:i + S] for i in range(0, len(guessed), S)])
    return guesses


def model_free(model, files, traces, batch_size=16):
    """Free running: the model reads a trace's memory and S_0 and writes the rest greedily, each
    state from its own earlier output. Returns (the guessed S_1.. per trace, bytes/s); bytes
    missing after an early EOP are -1, never right."""
    P = model.config.patch_size
    guesses, made, seconds = [None] * len(traces), 0, 0.0
    order = sorted(range(len(traces)), key=lambda i: len(traces[i][1]))  # like lengths together
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        # Every prompt is header + memory + S_0: prompts of one length, so one batch.
        prompts = [encode(b"", file_ext(files[i]), P)[:P] + list(traces[i][0] + traces[i][1][0])
                   for i in chunk]
        S = len(traces[chunk[0]][1][0])
        want = max(S * (len(traces[i][1]) - 1) for i in chunk)
        t0 = time.perf_counter()
        rows, _ = generate(model, prompts, want + 1, top_k=1)  # + 1: room to stop with EOP
        seconds += time.perf_counter() - t0
        for i, row in zip(chunk, rows):
            n = S * (len(traces[i][1]) - 1)
            end = row.index(EOP) if EOP in row else len(row)
            made += min(end + 1, len(row))  # the EOP that stopped a row was made, its padding not
            row = (row[:end] + [-1] * n)[:n]
            guesses[i] = [row[k:k + S] for k in range(0, n, S)]
    return guesses, made / max(seconds, 1e-9)


def rule_guesses(rule, traces, mode):
    """A rule's S_1..: one step from each true previous state, or free running from S_0."""
    out = []
    for memory, states in traces:
        if mode == "one_step":
            out.append([rule(memory, s) for s in states[:-1]])
        else:
            s, run = states[0], []
            for _ in states[1:]:
                s = rule(memory, s)
                run.append(s)
            out.append(run)
    return out


def simulate(model, files, *, memory_size=cpu.MEMORY_SIZE, num_registers=cpu.NUM_REGISTERS,
             batch_size=16):
    """Score a model on CPU traces (files: trace paths) one step at a time and free running, and
    the rules cpu.copy_rule and cpu.fetch_rule the same two ways. Prints a table and returns

        {"model": {"one_step": F, "free": F}, "copy": {...}, "copy_fetch": {...},
         "by_opcode": {op: {"states": n, "computed_bytes": n, "model": {"one_step": F,
                            "free": F}, "copy": {...}, "copy_fetch": {...}}},
         "traces": n, "states": n, "computed_bytes": n, "bytes_per_s": free-running speed}

    F = {"byte_accuracy", "state_accuracy", "computed_accuracy"}: the fraction of the bytes, of
    the whole states and of the computed bytes of S_1.. that the method got right; None where
    there is nothing to count (MOV A A computes no byte). by_opcode counts the states that
    executing op made (op in the previous state's IR; "fetch": S_1, whose S_0 has no IR)."""
    traces = read_traces(files, memory_size, num_registers)
    P, N = model.config.patch_size, model.config.max_patches
    for f, (memory, states) in zip(files, traces):
        patches = 1 + -(-(len(memory) + len(states) * len(states[0])) // P)
        if patches > N:
            raise ValueError(f"{f}: the trace needs {patches} patches, the model's context {N}")
    was_training = model.training
    model.eval()
    guesses = {("model", "one_step"): model_one_step(model, files, traces, batch_size)}
    guesses["model", "free"], speed = model_free(model, files, traces, batch_size)
    model.train(was_training)
    for name, rule in RULES.items():
        for mode in MODES:
            guesses[name, mode] = rule_guesses(rule, traces, mode)

    # Counts over all states ("all") and over the states each op made: total[scope, what], and
    # right[method, mode, scope, what] for what in states, bytes, computed (bytes).
    total, right = collections.Counter(), collections.Counter()
    for t, (memory, states) in enumerate(traces):
        for k in range(1, len(states)):
            true, prev = states[k], states[k - 1]
            op = "fetch" if k == 1 else cpu.OPCODE_NAMES[prev[2]]
            fetched = cpu.fetch_rule(memory, prev)
            computed = [j for j in range(len(true)) if fetched[j] != true[j]]
            for scope in ("all", op):
                total.update({(scope, "states"): 1, (scope, "bytes"): len(true),
                              (scope, "computed"): len(computed)})
                for key, guessed in guesses.items():
                    guess = list(guessed[t][k - 1])
                    right.update({
                        (*key, scope, "states"): guess == list(true),
                        (*key, scope, "bytes"): sum(a == b for a, b in zip(guess, true)),
                        (*key, scope, "computed"): sum(guess[j] == true[j] for j in computed)})

    def figures(name, mode, scope):
        counted = (("byte", "bytes"), ("state", "states"), ("computed", "computed"))
        return {f"{key}_accuracy": right[name, mode, scope, what] / total[scope, what]
                if total[scope, what] else None for key, what in counted}

    result = {name: {mode: figures(name, mode, "all") for mode in MODES} for name in METHODS}
    result["by_opcode"] = {
        op: {"states": total[op, "states"], "computed_bytes": total[op, "computed"],
             **{name: {mode: figures(name, mode, op) for mode in MODES} for name in METHODS}}
        for op in ("fetch",) + cpu.OPCODE_NAMES if total[op, "states"]}
    result.update(traces=len(traces), states=total["all", "states"],
                  computed_bytes=total["all", "computed"], bytes_per_s=speed)
    print_simulation(result)
    return result


def print_simulation(r):
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    def three(f):  # % of bytes, whole states and computed bytes right
        cells = (f["byte_accuracy"], f["state_accuracy"], f["computed_accuracy"])
        return "".join(pct(x).rjust(width) for x, width in zip(cells, (8, 8, 10)))

    print(f"{r['traces']} traces, {r['states']:,} states to predict ({r['computed_bytes']:,} "
          f"computed bytes); the model ran free at {r['bytes_per_s']:,.0f} bytes/s")
    print(f"{'% right':10s}{'one step':^26s}   {'free running':^26s}")
    print(" " * 10 + "   ".join([f"{'bytes':>8s}{'states':>8s}{'computed':>10s}"] * 2))
    for name in METHODS:
        print(f"{name:10s}" + three(r[name]["one_step"]) + "   " + three(r[name]["free"]))
    columns = (("model", "one_step"), ("model", "free"), ("copy_fetch", "one_step"))
    print("by the opcode executed: % of whole states right / % of computed bytes right")
    heads = [f"{name} {mode}" for name, mode in columns]
    print(f"{'op':6s}{'states':>7s}{'computed':>9s}" + "".join(h.rjust(22) for h in heads))
    for op, row in r["by_opcode"].items():
        cells = [f"{pct(row[n][m]['state_accuracy'])} / {pct(row[n][m]['computed_accuracy'])}"
                 for n, m in columns]
        counts = f"{op:6s}{row['states']:7d}{row['computed_bytes']:9d}"
        print(counts + "".join(c.rjust(22) for c in cells))


# ---------------------------------------------------------------------------------------------
# Compression: the model drives an arithmetic coder (coder.py holds the coder and the format)


def shown(path):
    """A path as printable text: bytes of a name that are not UTF-8 as \\xff escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def compress_file(model, path, output, *, batch_size=8):
    """sample.py --compress: write path's archive to output. Returns its size in bytes."""
    content, t0 = Path(path).read_bytes(), time.perf_counter()
    archive = compress(model, content, file_ext(path), batch_size=batch_size)
    dt = time.perf_counter() - t0
    write(Path(output), archive)
    bpb = 8 * len(archive) / len(content) if content else float("nan")
    print(f"{shown(path)}: {len(content):,} bytes -> {shown(output)}: {len(archive):,} bytes "
          f"({bpb:.3f} bits per byte) in {dt:.1f} s, {len(content) / max(dt, 1e-9):,.0f} bytes/s")
    return len(archive)


def decompress_file(model, path, output):
    """sample.py --decompress: restore path's file to output; nothing is written on an error."""
    archive, t0 = Path(path).read_bytes(), time.perf_counter()
    content, ext = decompress(model, archive)
    dt = time.perf_counter() - t0
    write(Path(output), content)
    print(f"{shown(path)} -> {shown(output)}: {len(content):,} bytes (extension {ext!r}), "
          f"CRC-32 checked, in {dt:.1f} s, {len(content) / max(dt, 1e-9):,.0f} bytes/s")
    return len(content)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser():
    """sample.py's flags (a test parses every documented command through it)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--ckpt", default="out/ckpt.pt",
                   help="our checkpoint, or official:PATH for a released .pth")
    p.add_argument("--out_dir", default="samples", help="where generated and converted files go")
    p.add_argument("--ext", default="",
                   help="extension of new files (default: the training data's)")
    p.add_argument("--num_samples", type=int, default=3, help="files to generate (one batch)")
    p.add_argument("--prompt", default="", help="continue this file instead of starting new ones")
    p.add_argument("--convert", default="", metavar="DIR", help="convert each file of DIR to --to")
    p.add_argument("--to", default="", help="target extension for --convert, e.g. mid")
    p.add_argument("--classify", default="", metavar="DIR",
                   help="label every file of DIR (classifier checkpoint)")
    p.add_argument("--simulate", default="", metavar="DIR", help="run the .bin CPU traces of DIR")
    p.add_argument("--json", default="", metavar="FILE",
                   help="--simulate: also write every figure of its table to FILE (JSON), to "
                        "compare runs")
    p.add_argument("--compress", default="", metavar="IN",
                   help="arithmetic-code file IN with the model into --output")
    p.add_argument("--decompress", default="", metavar="IN",
                   help="restore the file archived in IN (the same model) into --output")
    p.add_argument("--output", default="", metavar="OUT",
                   help="the file --compress or --decompress writes")
    p.add_argument("--batch_size", type=int, default=8,
                   help="--compress: chunks of the context coded side by side (the archive "
                        "records it for the decoder)")
    p.add_argument("--memory_size", type=int, default=cpu.MEMORY_SIZE,
                   help="CPU memory bytes of the traces")
    p.add_argument("--num_registers", type=int, default=cpu.NUM_REGISTERS,
                   help="CPU registers of the traces")
    p.add_argument("--max_new_bytes", type=int, default=None,
                   help="stop a file after this many new bytes (default: 2048 for new files, "
                        "all the context holds for --convert)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="divide the logits by this (0 = greedy)")
    p.add_argument("--top_k", type=int, default=None,
                   help="sample among the k most likely bytes (1 = greedy)")
    p.add_argument("--top_p", type=float, default=None,
                   help="sample among the most likely bytes that cover p, in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    p.add_argument("--show_chars", type=int, default=600,
                   help="print at most this much of each sample")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--attention", default="", choices=["", "sdpa", "flash", "manual"],
                   help="attention core to compute with ('' = the checkpoint's)")
    p.error = fail  # a bad flag gets one line and exit code 2, without the usage block
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    # Every check that needs no model comes first: a typo costs no checkpoint load.
    if args.temperature < 0:
        fail(f"--temperature must be at least 0 (0 = greedy), not {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        fail(f"--top_p must be in (0, 1], not {args.top_p}")
    for flag in ("top_k", "num_samples", "max_new_bytes", "batch_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            fail(f"--{flag} must be at least 1, not {getattr(args, flag)}")
    if args.show_chars < 0:
        fail(f"--show_chars must be at least 0, not {args.show_chars}")
    tasks = [flag for flag in ("prompt", "convert", "classify", "simulate", "compress",
                               "decompress") if getattr(args, flag)]
    if len(tasks) > 1:
        fail(f"--{tasks[0]} and --{tasks[1]} are two different tasks: pick one")
    if args.prompt and not os.path.isfile(args.prompt):
        fail(f"--prompt: no such file: {args.prompt}")
    for flag in ("compress", "decompress"):
        if getattr(args, flag) and not os.path.isfile(getattr(args, flag)):
            fail(f"--{flag}: no such file: {getattr(args, flag)}")
    if bool(args.compress or args.decompress) != bool(args.output):
        fail("--output OUT goes with --compress IN or --decompress IN")
    if bool(args.convert) != bool(args.to):
        fail("--convert DIR and --to EXT go together")
    if args.json and not args.simulate:
        fail("--json FILE goes with --simulate DIR")
    if args.simulate:
        error = cpu.size_error(args.memory_size, args.num_registers, 1, 1)
        if error:
            fail(error)
    folder = next((f for f in ("convert", "classify", "simulate") if getattr(args, f)), None)
    if folder:
        try:
            files = list_files(getattr(args, folder), {"bin"} if folder == "simulate" else None)
        except (FileNotFoundError, ValueError) as e:  # missing, empty, a broken link, ...
            fail(f"--{folder}: {e}")

    model, info = load_model(args.ckpt, pick_device(args.device), attention=args.attention)
    if isinstance(model, BGPTClassifier) and not args.classify:
        fail(f"--ckpt: {args.ckpt} is a classifier: it labels files, with --classify DIR")
    if args.classify and not isinstance(model, BGPTClassifier):
        fail(f"--classify needs a classifier checkpoint (train.py --classify), not {args.ckpt}")
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    seed=args.seed)
    try:
        if args.convert:
            convert(model, args.convert, args.to, out_dir=args.out_dir,
                    max_new_bytes=args.max_new_bytes, **sampling)
        elif args.classify:
            classify(model, info["classes"], args.classify)
        elif args.simulate:
            result = simulate(model, files, memory_size=args.memory_size,
                              num_registers=args.num_registers)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
                print(f"figures: {args.json}")
        elif args.compress:
            compress_file(model, args.compress, args.output, batch_size=args.batch_size)
        elif args.decompress:
            try:
                decompress_file(model, args.decompress, args.output)
            except ValueError as e:  # not an archive, another model, corrupt, ...: name the file
                fail(f"--decompress: {args.decompress}: {e}")
        else:
            sample_files(model, out_dir=args.out_dir, ext=args.ext or info.get("ext") or "txt",
                         num_samples=args.num_samples, prompt=args.prompt or None,
                         max_new_bytes=args.max_new_bytes or 2048, show_chars=args.show_chars,
                         **sampling)
    except (FileNotFoundError, ValueError) as e:  # a file the task cannot use, named in e
        fail(str(e))


if __name__ == "__main__":
    main()
