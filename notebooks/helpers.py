"""Helpers the tutorial notebooks share, so that their cells show the idea and not the plumbing.

The notebooks run with notebooks/ as their working directory and put the repository root on
sys.path first (to import bgpt, data, train); then `import helpers` finds this file. Tests
import it as `from notebooks import helpers` (pytest puts the root on sys.path).

    draw_model   the figure of the whole model with the shape of every tensor (notebook 01)
    command      the train.py command line of a run, as typed from the repository root
    read_log     a run's log.jsonl: training lines, evaluations, the compressors' figures
    best         the best compressor of one family (classic or learned) on the held-out bytes
    compare      the model beside the best compressors, and which of them it beats
    mean_spread  "mean ± std (min-max, n seeds)" of accuracies over seeds
    code_length_bits  the bits the model gives a file cut as the compressor cuts it (notebook 02)
    byte_bits    the bits the model gives each byte of whole files (notebooks 03, 04)
    bmp_pixel_bits  those bits summed per pixel of a BMP, as an image (notebook 03)
    simulation_seeds  sample.py --simulate's figures over training seeds: mean, spread, range (06)
    target_bits  a target file's bits per byte, alone or after its conversion source (notebook 05)
    midi_parts   a label per byte of a MIDI file: header, delta time, pitch, velocity... (05)
    midi_title   the title text a MIDI file carries (notebook 05)
"""

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyBboxPatch

import coder
import data

# ---------------------------------------------------------------------------------------------
# The model figure


def draw_model(P=16, N=512, C=768, V=257, patch_layers=12, byte_layers=3):
    """bGPT drawn top to bottom, one box per step with the tensor's shape after it (B: files in
    a batch). Blue runs once per patch, green once per byte, orange is the one-patch shift; the
    red side boxes are the position embeddings. The defaults are the paper's model. Returns the
    figure."""
    M = f"B·{N - 1}"  # B·(N-1) rows: one per predicted patch
    steps = [  # (what happens, the tensor's shape after it, colour): top to bottom
        ("a file: header patch + content + end patch", "bytes", "white"),
        ("ids, a header patch first", f"(B, T) = (B, {N * P})", "white"),
        (f"patches: view the ids {P} at a time", f"(B, N, P) = (B, {N}, {P})", "white"),
        (f"patch embedding: the sum of {P} rows of a ({P * V}, {C}) table",
         f"(B, N, C) = (B, {N}, {C})", "#dbe9f6"),
        (f"patch decoder: {patch_layers} GPT-2 blocks, causal over patches",
         f"(B, N, C) = (B, {N}, {C})", "#dbe9f6"),
        ("one-patch shift: features 0..N-2 meet patches 1..N-1",
         "(B·(N-1), C) and (B·(N-1), P) targets", "#fde9d0"),
        (f"byte decoder input: [feature, emb(b0), ..., emb(b{P - 2})]",
         f"(B·(N-1), P, C) = ({M}, {P}, {C})", "#e3f1df"),
        (f"byte decoder: {byte_layers} GPT-2 blocks, causal over {P} bytes",
         f"(B·(N-1), P, C) = ({M}, {P}, {C})", "#e3f1df"),
        ("tied output layer (the byte embedding, transposed)",
         f"logits (B·(N-1), P, V) = ({M}, {P}, {V})", "#e3f1df"),
    ]
    fig, ax = plt.subplots(figsize=(10, 7.4))
    ax.set(xlim=(0, 10), ylim=(-0.6, len(steps) - 0.3))
    ax.axis("off")
    y = [len(steps) - 1 - i for i in range(len(steps))]  # the row of step i, top to bottom
    for i, (text, shape, colour) in enumerate(steps):
        ax.add_patch(FancyBboxPatch((0.2, y[i] - 0.3), 6.1, 0.6, boxstyle="round,pad=0.02",
                                    fc=colour, ec="black"))
        ax.text(0.35, y[i] + 0.1, text, va="center", fontsize=10)
        ax.text(0.35, y[i] - 0.15, shape, va="center", fontsize=10, family="monospace",
                color="#1f4e9c")
        if i:  # an arrow from the step above
            ax.annotate("", (3.25, y[i] + 0.3), (3.25, y[i - 1] - 0.3),
                        arrowprops=dict(arrowstyle="->", lw=1.5))

    def side(row, text, target_row):  # a box right of the column, an arrow into target_row
        ax.add_patch(FancyBboxPatch((7.0, row - 0.35), 2.8, 0.7, boxstyle="round,pad=0.02",
                                    fc="#f6dcdc", ec="black"))
        ax.text(8.4, row, text, ha="center", va="center", fontsize=9)
        ax.annotate("", (6.3, target_row), (7.0, row),
                    arrowprops=dict(arrowstyle="->", color="#b03a2e"))

    side(y[3] + 0.4, f"+ patch position embedding\n({N}, {C}): one row per patch,\n"
         "added at the decoder's input", y[3])
    side(y[6] + 0.1, f"+ byte position embedding\n({P}, {C}): one row per slot,\n"
         "added at the decoder's input", y[6])
    # The road that skips the patch decoder: the target patches, straight from the input.
    ax.annotate("", (6.3, y[5]), (6.3, y[2]), arrowprops=dict(
        arrowstyle="->", ls="--", color="gray", connectionstyle="bar,fraction=-0.15"))
    ax.text(7.0, (y[2] + y[5]) / 2 - 0.4,
            "patches 1..N-1 skip the patch\ndecoder: they are the targets,\n"
            f"and their bytes b0..b{P - 2} fill\nslots 1..{P - 1} of the byte decoder",
            fontsize=9, color="dimgray", va="center")
    ax.text(7.0, y[8], "logits[:, j] predicts\nbyte j of patch i+1\n"
            "(the header is never predicted)", fontsize=9, va="center")
    ax.set_title(f"bGPT: P = {P}, N = {N} ({N * P:,} bytes), C = {C}, V = {V}", fontsize=12)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Runs: their command line and their log


def command(flags):
    """The same run from the repository root (the notebooks' paths start with ../)."""
    return "python train.py " + " ".join(f.replace("../", "") for f in flags)


def read_log(run):
    """(training records, [(step, evaluation)], baselines or None) from run/log.jsonl: a record
    per log line ("loss"), per evaluation ("eval") and the compressors train.py ran at the end
    ("baselines"), on exactly the held-out bytes the model was scored on."""
    records = [json.loads(line) for line in open(f"{run}/log.jsonl")]
    steps = [r for r in records if "loss" in r]
    evals = [(r["step"], r["eval"]) for r in records if "eval" in r]
    return steps, evals, next((r["baselines"] for r in records if "baselines" in r), None)


# ---------------------------------------------------------------------------------------------
# The model against the compressors


def best(base, kind):
    """(name, bits per byte) of the best "classic" compressor in base (data.CLASSIC: each file
    alone) or the best "learned" one (primed with the training split). base: a baselines record
    (data.baselines); its "best_*" summaries are skipped."""
    family = {k: v for k, v in base.items()
              if not k.startswith("best_") and (k in data.CLASSIC) == (kind == "classic")}
    return min(family.items(), key=lambda item: item[1])


def compare(model_name, model_bpb, base, codec=None, ext=None):
    """Print the model beside the best classic compressor, the best learned one and, if given,
    the format's own codec (name, bits per byte), all on the same bytes; then every compressor,
    and the model against the best of them (the one a skeptic would name). Given ext (the held-out
    files' extension), also the learned compressors' setting for that kind (data.LEARNED, chosen
    on a validation split of its training files). Returns the rows."""
    rows = [(model_name, model_bpb)] + [(f"best {kind}: {name}", bpb)
                                        for kind in ("classic", "learned")
                                        for name, bpb in [best(base, kind)]]
    rows += [codec] if codec else []
    for name, bpb in rows:
        print(f"{name:32s} {bpb:6.3f} bits per byte")
    if ext is not None:
        print(f"learned compressors, set for .{ext} files: {data.learned_setting(ext)}")
    print("every compressor: " + ", ".join(f"{k} {v:.3f}" for k, v in base.items()
                                           if not k.startswith("best_")))
    name, lowest = min(rows[1:], key=lambda r: r[1])
    saving = 1 - model_bpb / lowest
    print(f"\nagainst the best of them ({name}): bGPT spends {abs(saving):.0%} "
          + ("fewer bits" if saving >= 0 else "MORE bits: the compressor wins"))
    return rows


def mean_spread(values):
    """'mean ± standard deviation (min-max, n seeds)' of accuracies (fractions)."""
    v = np.array(values)
    spread = v.std(ddof=1) if len(v) > 1 else 0
    return f"{v.mean():.1%} ± {spread:.1%} ({v.min():.1%}-{v.max():.1%}, {len(v)} seeds)"


# ---------------------------------------------------------------------------------------------
# The model as a compressor


def code_length_bits(model, content, ext="txt", batch_size=8):
    """The bits the model gives content (bytes) when it is cut as coder.compress cuts it: chunks
    of the context, each after its own header patch and nothing else. Each byte costs -log2 of
    its probability among the 256 byte values (EOP dropped and the rest renormalised, as the coder
    does: the archive stores the length instead of coding an end). One parallel forward pass per
    batch of chunks, in fp32; the archive's stream is this plus the coder's rounding."""
    S = coder.chunk_size(model)
    chunks = [content[i:i + S] for i in range(0, len(content), S)]
    return sum(float(b.sum()) for b in byte_bits(model, chunks, ext, batch_size, ids=256))


def byte_bits(model, contents, ext, batch_size=8, ids=257):
    """[(n,) array] per file: the bits the model gives each byte of contents (each a whole file
    that fits the context; a full one loses only its end patch), -log2 of its probability given
    the bytes before it, over the first `ids` ids: all 257 as content_bpb counts them (the EOP
    that ends a file is left out), or the 256 byte values as the coder codes them. fp32, no
    gradients."""
    P, device, out = model.config.patch_size, next(model.parameters()).device, []
    T = P * model.config.max_patches  # the context, in ids
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for first in range(0, len(contents), batch_size):
            part = contents[first:first + batch_size]
            x, mask, _ = data.collate([(torch.tensor(data.encode(c, ext, P)[:T]), 0)
                                       for c in part], P)
            logits, _ = model(x.to(device), mask.to(device))  # (B, T - P, V): [:, t] predicts x[:, P + t]
            logp = logits[..., :ids].float().log_softmax(-1)  # (B, T - P, ids)
            for row, c in zip(logp, part):
                target = torch.tensor(list(c), device=device)  # (n,)
                nats = -row[:len(c)].gather(-1, target[:, None])[:, 0]  # (n,)
                out.append((nats / math.log(2)).cpu().numpy())
    return out


def bmp_pixel_bits(bits, width=32, height=32, header=54):
    """(height, width) bits per pixel, top row first, from the per-byte bits of a 24-bit BMP:
    its rows are stored bottom-up, each pixel blue, green, red, each row padded to 4 bytes;
    a pixel costs the sum of its three bytes."""
    row = (3 * width + 3) // 4 * 4  # bytes per stored row, padding included
    rows = np.asarray(bits)[header:header + row * height].reshape(height, row)
    return rows[:, :3 * width].reshape(height, width, 3).sum(-1)[::-1]  # bottom-up -> top-down


# ---------------------------------------------------------------------------------------------
# CPU traces over seeds (notebook 06)


def simulation_seeds(results):
    """Print sample.simulate's figures (results: one dict per training seed, as `sample.py
    --simulate --json` writes them) as mean, spread and range over the seeds: the model's three
    figures one step and free running beside copy-fetch's; then, per opcode executed, the share
    of computed bytes the model got right (one step and free running) and of whole states one
    step, beside copy-fetch's (a rule: the same every seed)."""
    def row(method, mode, key):
        return [r[method][mode][key] for r in results]

    keys = (("byte_accuracy", "state bytes"), ("state_accuracy", "whole states"),
            ("computed_accuracy", "computed bytes"))
    print(f"held-out, {results[0]['traces']} traces, {results[0]['states']:,} states; "
          f"{len(results)} training seeds")
    for mode in ("free", "one_step"):
        for key, label in keys:
            rule = row("copy_fetch", mode, key)[0]  # a rule learns nothing: the same every seed
            print(f"{mode.replace('_', ' '):9s} {label:15s} model {mean_spread(row('model', mode, key))}"
                  f" | copy-fetch {rule:.1%}")
    print("\nby the opcode executed, % mean (min-max) over the seeds: computed bytes right (model,"
          " one step and free running), whole states right one step (model; copy-fetch)")
    heads = ("computed, one step", "computed, free", "states, one step", "copy-fetch")
    print(f"{'op':6s}{'states':>7s}{'computed':>9s}" + "".join(h.rjust(22) for h in heads[:3])
          + heads[3].rjust(11))
    for op, first in results[0]["by_opcode"].items():
        if not first["computed_bytes"]:
            continue  # nothing executed: only fetched (the first state, HLT, NOP)
        cells = []
        for mode, key in (("one_step", "computed"), ("free", "computed"), ("one_step", "state")):
            v = 100 * np.array([r["by_opcode"][op]["model"][mode][f"{key}_accuracy"]
                                for r in results])
            cells.append(f"{v.mean():5.1f} ({v.min():.1f}-{v.max():.1f})".rjust(22))
        rule = 100 * first["copy_fetch"]["one_step"]["state_accuracy"]
        print(f"{op:6s}{first['states']:7d}{first['computed_bytes']:9d}" + "".join(cells)
              + f"{rule:11.1f}")


# ---------------------------------------------------------------------------------------------
# Conversion: the bits of a target file, and the parts of a MIDI file (notebook 05)


def target_bits(model, content, ext, source=None, source_ext=None):
    """(bits, hits), each of n + 1 values: the bits the model gives each of content's n bytes and
    the EOP that ends them (-log2 of its probability over all 257 ids, given the true ids before
    it), and whether its most likely id was the right one. The sequence is the one the model was
    trained on: with a source (conversion), the source's patches without its end patch, then
    content's header patch, content and end patch; without, the file alone. It must fit the
    context. fp32, no gradients."""
    P, device = model.config.patch_size, next(model.parameters()).device
    before = data.encode(source, source_ext, P)[:-P] if source is not None else []
    x = torch.tensor([before + data.encode(content, ext, P)], device=device)  # (1, T)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        logits, _ = model(x)  # (1, T - P, V): logits[:, i] predicts x[:, P + i]
    first = len(before) + P  # index in x of content's first byte, after its header patch
    idx = torch.arange(first, first + len(content) + 1, device=device)  # n bytes, then the EOP
    logp = logits[0, idx - P].float().log_softmax(-1)  # (n + 1, V)
    truth = x[0, idx]  # (n + 1,)
    bits = -logp.gather(-1, truth[:, None])[:, 0] / math.log(2)  # (n + 1,)
    return bits.cpu().numpy(), (logp.argmax(-1) == truth).cpu().numpy()


def midi_parts(mid):
    """A label per byte of a one-track MIDI file as abc2midi writes it, and one more for the EOP
    after it: "MThd + MTrk" (the fixed header bytes), "track length" (the 4 bytes that count the
    track), "delta times", "text copied from ABC" (the data of text (ff 01) and title (ff 03)
    meta events), "meta events" (the rest of them: tempo, key, metre, end of track), "note
    on/off status", "pitch", "velocity", "other events" and "end marker (EOP)"."""
    parts = ["MThd + MTrk"] * 18 + ["track length"] * 4  # 14 bytes of MThd, then "MTrk" + length
    i, status = 22, 0x90
    while i < len(mid):
        start = i
        while i < len(mid) - 1 and mid[i] & 0x80:  # a delta time: 7 bits a byte, high bit = more
            i += 1
        i += 1
        parts += ["delta times"] * (i - start)
        if i >= len(mid):
            break
        if mid[i] == 0xFF:  # meta event: ff, type, length, data
            kind, n = mid[i + 1:i + 2], mid[i + 2] if i + 2 < len(mid) else 0
            text = kind in (b"\x01", b"\x03")
            parts += ["meta events"] * 3 + ["text copied from ABC" if text else "meta events"] * n
            i += 3 + n
            continue
        if mid[i] & 0x80:  # a status byte (abc2midi writes one before every note message)
            status = mid[i]
            parts.append("note on/off status")
            i += 1
        if status & 0xF0 in (0x80, 0x90):
            parts += ["pitch", "velocity"]
            i += 2
        else:
            n_data = 1 if status & 0xF0 in (0xC0, 0xD0) else 2
            parts += ["other events"] * n_data
            i += n_data
    return parts[:len(mid)] + ["end marker (EOP)"]


def midi_title(mid):
    """The text of a MIDI file's first title event (ff 03 length text; abc2midi copies the ABC's
    T: line there), or None where it has none."""
    i = mid.find(b"\xff\x03")
    return mid[i + 3:i + 3 + mid[i + 2]] if 0 <= i < len(mid) - 2 else None
