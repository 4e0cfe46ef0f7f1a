"""
Files -> bytes -> patches: the data side of bGPT (arXiv:2402.19155).

A file of n bytes with extension "txt" becomes, with P = 16:

    [t x t EOP EOP ... EOP]            header patch: the extension's UTF-8 bytes, padded with EOP
    [b0 b1 ... b15] ... [b.. EOP EOP]  the content, its last patch padded with EOP
    [EOP EOP ... EOP]                  end patch

EOP = 256 never occurs inside content, so decoding drops the header and stops at the first EOP.
In order, this file holds: the one-line error every script reports bad input with (fail);
encoding and decoding (encode, decode, header_ext, file_ext); cropping a long file to the context
(crop); the datasets for the paper's three uses (generation, conversion, classification), their
collate function and the folders train.py reads (load_data); the order training reads them in
(get_batch); the baselines a model's bits per byte is compared with (classic codecs, each file
alone, and codecs primed with the training split); the default dataset (this Python's own
standard library); and the command line:

    python data.py cpu --out data/cpu --count 1000     # write random CPU traces (cpu.py's machine)
    python data.py show FILE                            # print a file's patches
    python data.py tune stdlib                          # choose the learned baselines' settings
"""

import argparse
import bz2
import functools
import hashlib
import lzma
import os
import random
import signal
import sys
import sysconfig
import time
import zlib
from pathlib import Path

import brotli
import pyppmd
import torch
import zstandard

from bgpt import EOP  # 256: the end-of-patch id, defined once beside the model that reads it


def fail(message):
    """A clear one-line error and exit code 2 (as argparse does for a bad flag). Every script
    reports bad input through it; it lives here because data.py imports no other script."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "bgpt"
    print(f"{script}: error: {message}", file=sys.stderr)
    sys.exit(2)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help as the scripts want it: the docstring as written, and "(default: X)" after every
    flag whose help does not state its default itself ("none" for an empty one)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: {'none' if action.default in (None, '') else action.default})"


# ---------------------------------------------------------------------------------------------
# Encoding and decoding


def encode(content: bytes, ext: str, patch_size=16) -> list:
    """Bytes and extension -> ids in the released format (header, content, end patch)."""
    # A name that is not valid UTF-8 keeps its raw bytes (Python stores them as surrogates).
    header = list(ext.encode("utf-8", "surrogateescape")[:patch_size])
    header += [EOP] * (patch_size - len(header))
    body = list(content)
    body += [EOP] * (-len(body) % patch_size)  # pad the last content patch
    return header + body + [EOP] * patch_size


def decode(ids, patch_size=16) -> bytes:
    """Ids -> content bytes: skip the header patch, stop at the first EOP."""
    ids = [int(i) for i in ids[patch_size:]]
    end = ids.index(EOP) if EOP in ids else len(ids)
    return bytes(ids[:end])


def header_ext(ids, patch_size=16) -> str:
    """The extension written in a sequence's header patch."""
    head = bytes(i for i in ids[:patch_size] if i != EOP)
    return head.decode("utf-8", errors="replace")


def file_ext(path) -> str:
    """The extension as the release reads it: the text after the last dot ("" if none)."""
    name = Path(path).name
    return name.rsplit(".", 1)[1] if "." in name else ""


def crop(ids, max_patches, patch_size=16, mode="head", rng=random):
    """Fit a sequence into max_patches patches, keeping the header patch in front.

    mode "head" keeps the start (evaluation); "random" picks head, body (a random patch-aligned
    window) or tail with equal odds, as the release does at training time, so a long file
    teaches its middle and its end too, not only its first 8 KiB."""
    P = patch_size
    n = len(ids) // P
    if n <= max_patches:
        return ids
    start = crop_start(n, max_patches, mode, rng)
    return ids[:P] + ids[start * P:(start + max_patches - 1) * P]


def crop_start(n, max_patches, mode, rng):
    """The first content patch a crop of an n-patch sequence keeps (n > max_patches); it keeps
    max_patches - 1 from there, beside the header."""
    keep = max_patches - 1  # content patches that fit beside the header
    if mode == "head":
        return 1
    if mode == "random":
        return rng.choice([1, rng.randint(1, n - keep), n - keep])  # head, body, tail
    raise ValueError(f"crop mode must be 'head' or 'random', not {mode!r}")


def read_window(paths, first, count, patch_size=16):
    """Patches first .. first + count - 1 of the sequence that encoding paths one after another
    gives (each file's header and content patches, one end patch after the last file: the layout
    of a conversion pair, or of one file), reading only those patches' bytes from the files. A
    crop of a 4 MB file reads its 8 KiB, not 4 MB, and encodes 8 KiB."""
    P, ids, at = patch_size, [], 0  # at: the first patch of the piece in hand
    for k, path in enumerate(paths):
        size = os.path.getsize(path)
        for piece, length in (("header", 1), ("content", -(-size // P)), ("end", 1)):
            if piece == "end" and k < len(paths) - 1:
                continue  # an input file has no end patch: the target's header follows
            lo, hi = max(first, at), min(first + count, at + length)  # the window's part of it
            if lo < hi and piece == "content":
                with open(path, "rb") as f:
                    f.seek((lo - at) * P)
                    content = list(f.read((hi - lo) * P))
                ids += content + [EOP] * ((hi - lo) * P - len(content))  # the last one's padding
            elif lo < hi:
                ids += encode(b"", file_ext(path), P)[:P] if piece == "header" else [EOP] * P
            at += length
    return ids


# ---------------------------------------------------------------------------------------------
# Datasets: one item = one training sequence built from one file or a pair of files


def list_files(root, exts=None):
    """Every file under root (sorted, hidden files skipped, symbolic links followed), optionally
    only these extensions. Raises FileNotFoundError or ValueError with a one-line reason for a
    folder that is missing or empty, a link that leads nowhere or in a loop, an unreadable file."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    files, seen = [], set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a folder reached twice: a link points back up the tree
            raise ValueError(f"data folder {root}: symbolic-link loop at {folder}")
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(folder, name)
            if name.startswith(".") or (exts is not None and file_ext(path) not in exts):
                continue
            if not path.is_file():  # a link to nothing, or links that point at each other
                raise ValueError(f"data folder {root}: {path} is not a regular file "
                                 "(a broken or looping link?)")
            if not os.access(path, os.R_OK):
                raise ValueError(f"data folder {root}: cannot read {path} (permission denied)")
            files.append(path)
    if not files:
        which = f" with extension {sorted(exts)}" if exts else ""
        raise FileNotFoundError(f"data folder {root} holds no files{which}")
    return sorted(files)


def parse_convert(spec):
    """'abc->mid' -> [('abc', 'mid')]; 'abc&mid' -> both directions."""
    for sep, both in (("->", False), ("&", True)):
        if sep in spec:
            a, b = spec.split(sep)
            if a and b and a != b:
                return [(a, b), (b, a)] if both else [(a, b)]
    raise ValueError(f"conversion must look like 'abc->mid' or 'abc&mid', not {spec!r}")


def conversion_pairs(files, spec):
    """Pair files that share a path and differ only in extension: [(input, target), ...]."""
    by_stem = {}
    for f in files:
        by_stem.setdefault((f.parent, f.name.rsplit(".", 1)[0]), {})[file_ext(f)] = f
    pairs = [(exts[a], exts[b]) for a, b in parse_convert(spec) for exts in by_stem.values()
             if a in exts and b in exts]
    if not pairs:
        raise FileNotFoundError(f"no file pairs for {spec!r} "
                                "(paired files share a name, e.g. x.abc and x.mid)")
    return pairs


def label_of(path):
    """Classification label: the file name's part before the first '_' ('Business_12.txt')."""
    return Path(path).name.split("_", 1)[0]


class ByteDataset(torch.utils.data.Dataset):
    """Items are (ids, label): ids a LongTensor of whole patches, label an int (-1: none).

    sources: a list of files (generation, classification) or of (input, target) pairs
    (conversion: the input's patches without its end patch, then the target's, header first,
    so the model reads the input and writes the target file).
    """

    def __init__(self, sources, max_patches, patch_size=16, crop_mode="head", labels=None, seed=0):
        self.sources = sources
        self.max_patches, self.patch_size, self.crop_mode = max_patches, patch_size, crop_mode
        self.classes = sorted({label_of(s) for s in sources}) if labels is True else labels
        self.rng = random.Random(seed)

    def __len__(self):
        return len(self.sources)

    def ids(self, i):
        """Item i's ids, cropped to the context before anything is read: the crop is chosen
        from the files' sizes (as crop() would choose it), then only its patches are read."""
        P, N = self.patch_size, self.max_patches
        paths = self.sources[i] if isinstance(self.sources[i], tuple) else (self.sources[i],)
        n = sum(1 + -(-os.path.getsize(p) // P) for p in paths) + 1  # patches, end patch included
        if n <= N:
            return read_window(paths, 0, n, P)
        start = crop_start(n, N, self.crop_mode, self.rng)
        return read_window(paths, 0, 1, P) + read_window(paths, start, N - 1, P)

    def __getitem__(self, i):
        label = -1
        if self.classes:
            name = label_of(self.sources[i])
            label = self.classes.index(name) if name in self.classes else -1
        return torch.tensor(self.ids(i), dtype=torch.long), label


def collate(batch, patch_size=16):
    """Pad a batch to its longest sequence with EOP. Returns ids (B, T), a per-patch mask (B, N)
    with 1 on real patches, and labels (B,)."""
    longest = max(len(ids) for ids, _ in batch)
    x = torch.full((len(batch), longest), EOP, dtype=torch.long)
    mask = torch.zeros(len(batch), longest // patch_size, dtype=torch.long)
    for i, (ids, _) in enumerate(batch):
        x[i, :len(ids)] = ids
        mask[i, :len(ids) // patch_size] = 1
    return x, mask, torch.tensor([label for _, label in batch])


def load_data(cfg, mcfg, hold_out=None):
    """(train, held-out) ByteDatasets for the mode of cfg (a train.TrainConfig), encoded with
    the model's patch_size and context (mcfg, a BGPTConfig). The held-out files are --eval_dir's
    when it is given, else every k-th training file (hold_out: whether the training files lose
    those; a resumed run keeps its first choice, so a new --eval_dir changes what is scored,
    never what is trained on)."""
    exts = {e for pair in parse_convert(cfg.convert) for e in pair} if cfg.convert else None
    hold_out = not cfg.eval_dir if hold_out is None else hold_out
    if not cfg.train_dir:  # the stdlib's own split: the same files on every machine
        train_files, eval_files = stdlib_files(cfg.eval_fraction)
    elif hold_out:  # every k-th name: a fixed choice that keeps pairs (x.abc, x.mid) together
        files = list_files(cfg.train_dir, exts)
        k = max(2, round(1 / cfg.eval_fraction))
        held = set(sorted({f.with_suffix("") for f in files})[::k])
        eval_files = [f for f in files if f.with_suffix("") in held]
        train_files = [f for f in files if f.with_suffix("") not in held]
        if not train_files or not eval_files:
            raise ValueError(f"{cfg.train_dir}: too few files to hold some out "
                             "(give --eval_dir)")
    else:
        train_files, eval_files = list_files(cfg.train_dir, exts), []
    if cfg.eval_dir:
        eval_files = list_files(cfg.eval_dir, exts)
    elif not eval_files:
        raise ValueError(f"--eval_dir: the run trained on every file of {cfg.train_dir}; "
                         "name a folder to score")
    if cfg.convert:
        train_src = conversion_pairs(train_files, cfg.convert)
        eval_src = conversion_pairs(eval_files, cfg.convert)
    else:
        train_src, eval_src = train_files, eval_files
    if cfg.eval_max_files and len(eval_src) > cfg.eval_max_files:
        # evenly spaced: the files are sorted by label, so every label keeps some
        eval_src = eval_src[::len(eval_src) // cfg.eval_max_files][:cfg.eval_max_files]
    labels = True if cfg.classify else None
    train = ByteDataset(train_src, mcfg.max_patches, mcfg.patch_size, crop_mode="random",
                        labels=labels, seed=cfg.seed)
    held_out = ByteDataset(eval_src, mcfg.max_patches, mcfg.patch_size, crop_mode="head",
                           labels=train.classes)
    if cfg.classify and len(train.classes) < 2:
        raise ValueError(f"{cfg.train_dir}: classification needs at least 2 labels (the file "
                         f"name before the first '_'), found {train.classes}")
    return train, held_out


# ---------------------------------------------------------------------------------------------
# Batches: the order training reads the items in, a pure function of the seed and the step


def get_batch(dataset, cfg, micro_step, rank=0, world=1):
    """This process's share of global micro-batch number `micro_step` (cfg: a train.TrainConfig,
    for batch_size, seed and loss_skip_bytes). Returns ids (B, T), loss mask (B, N), labels (B,).

    A global micro-batch is items micro_step * G .. + G - 1 of an endless stream, G =
    batch_size x world; process r takes the r-th run of batch_size of them, so all processes
    together read what one process with a G-sized batch would. The stream is a fresh permutation
    per epoch and each item's crop is seeded by its place in the stream: a batch is a pure
    function of (seed, micro_step), and a resumed run sees exactly the uninterrupted run's."""
    B, G = cfg.batch_size, cfg.batch_size * world
    items = []
    for j in range(micro_step * G + rank * B, micro_step * G + (rank + 1) * B):
        epoch, k = divmod(j, len(dataset))
        dataset.rng.seed(cfg.seed * 1_000_003 + j)
        items.append(dataset[epoch_order(len(dataset), cfg.seed, epoch)[k]])
    x, mask, labels = collate(items, dataset.patch_size)
    return x, loss_mask(mask, cfg, dataset.patch_size), labels


def loss_mask(mask, cfg, P):
    """Zero the mask on the content patches that --loss_skip_bytes leaves out of the loss. Patch 0
    is the header (never predicted); patches 1 .. skip/P are the given prefix."""
    if cfg.loss_skip_bytes:
        mask = mask.clone()
        mask[:, 1:1 + cfg.loss_skip_bytes // P] = 0
    return mask


@functools.lru_cache(maxsize=2)
def epoch_order(n, seed, epoch):
    """The order of the n training items in this epoch (cached: one permutation per epoch)."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g).tolist()


class Batches(torch.utils.data.Dataset):
    """This process's micro-batches as a dataset: item i is get_batch(..., i, rank, world), a
    pure function of i, so a worker process builds exactly what the loop would have built."""

    def __init__(self, dataset, cfg, rank=0, world=1):
        self.dataset, self.cfg, self.rank, self.world = dataset, cfg, rank, world

    def __len__(self):
        return self.cfg.max_steps * self.cfg.grad_accum

    def __getitem__(self, micro_step):
        return get_batch(self.dataset, self.cfg, micro_step, self.rank, self.world)


def batch_loader(dataset, cfg, first, rank=0, world=1, device=torch.device("cpu"), workers=4):
    """An iterator over this process's micro-batches first, first + 1, ... (first = step x
    grad_accum on a resume): (ids, loss mask, labels) on the CPU. For a GPU, `workers` processes
    build them ahead of the step into pinned (page-locked) memory, from which the loop's
    non_blocking copies overlap the GPU's work. On a CPU they are built in this process, in
    turn with the steps: worker processes would take the cores the step itself needs."""
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        Batches(dataset, cfg, rank, world), batch_size=None,  # items are whole batches
        sampler=range(first, cfg.max_steps * cfg.grad_accum), num_workers=workers if cuda else 0,
        pin_memory=cuda, worker_init_fn=_ignore_ctrl_c if cuda else None,
        prefetch_factor=4 if cuda else None,
        generator=torch.Generator())  # its own: drawing from torch's would shift dropout's
    return iter(loader)


def _ignore_ctrl_c(worker_id):
    # Ctrl-C reaches the workers too; only the training process acts on it (it finishes its
    # step and saves), and it needs its workers alive until then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------------
# Baselines: what compressors need for exactly the bytes the model is scored on
#
# Every figure is 8 * total coded bytes / total content bytes over the held-out contents, each
# file coded on its own, as the model codes each file: the unit of the model's content bits per
# byte. Container bytes (magic numbers, checksums, stored lengths) are left out wherever the
# format allows, as the model's figure holds none. Two families:
#   classic: deflate, LZMA2, bzip2, brotli, zstd; they know nothing but the file itself;
#   learned: PPMd and zstd, primed with the training split, which the model learned from too.

LZMA_MIN_DICT_BYTES = 4096  # the smallest dictionary liblzma accepts
BZIP2_CONTAINER_BYTES = 4 + 10  # "BZh9" header; end-of-stream magic (48 bits) and CRC (32 bits)
BZIP2_BLOCK_BYTES = 6 + 4  # a block's magic (48 bits) and CRC (32 bits)
ZSTD_MAGIC_BYTES = 4  # the frame's magic number, which zstd's magicless format drops
ZSTD_LEVEL = 19  # zstd's strongest level without --ultra (whose bigger windows ours never fill)


def _deflate(content):
    # raw deflate (zlib -9, the most hash memory), no gzip/zlib header or trailer: 18 bytes fewer
    # than gzip -9 on every file
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return len(z.compress(content) + z.flush())


def _lzma2(content):
    # raw LZMA2 (no .xz container, index or check) with `xz -9e` settings and a dictionary no
    # bigger than the file: the same output, far faster than allocating 64 MiB per small file
    lzma2 = {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
             "dict_size": max(LZMA_MIN_DICT_BYTES, len(content))}
    return len(lzma.compress(content, format=lzma.FORMAT_RAW, filters=[lzma2]))


def _bzip2(content):
    # bzip2 -9 less its container bytes; a file under 720 KB fits one block even after bzip2's
    # run-length pre-pass, so a longer one is charged 10 bytes per extra block
    blocks = 1 if content else 0
    return len(bz2.compress(content, 9)) - BZIP2_CONTAINER_BYTES - blocks * BZIP2_BLOCK_BYTES


def _zstd(content, dictionary=None):
    # zstd -19 without content size, checksum, dictionary id or magic number
    z = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=dictionary, write_content_size=False,
                                 write_checksum=False, write_dict_id=False)
    return len(z.compress(content)) - ZSTD_MAGIC_BYTES


CLASSIC = {  # name: content -> coded bytes
    "deflate": _deflate,  # gzip -9 without the gzip container
    "lzma2": _lzma2,  # xz -9e without the xz container
    "bzip2": _bzip2,  # bzip2 -9
    "brotli": lambda content: len(brotli.compress(content, quality=11)),  # brotli -q 11
    "zstd": _zstd,  # zstd -19
}


def _bits_per_byte(sizes, contents):
    return 8 * sum(sizes) / max(sum(len(c) for c in contents), 1)


def classic_bits_per_byte(contents):
    """{name: bits per byte} of every classic codec on contents (a list of bytes), each alone."""
    return {name: _bits_per_byte([code(c) for c in contents], contents)
            for name, code in CLASSIC.items()}


# PPMd (var. H, the model of 7-Zip's .7z PPMd) predicts each byte from the longest context it has
# seen before, up to `order` bytes, and codes it with a range coder; primed with the training
# split it is a strong learned baseline: a byte model fitted in one pass, with no neural network.
# Its order (the longest context) is chosen per kind of file, in LEARNED below; PPMD_ORDER is the
# setting for a kind with no entry there.
PPMD_ORDER = 32
PPMD_MEM_PER_BYTE = 64  # model memory per priming byte: order 32 on the stdlib needs ~45
PPMD_MAX_MEM = 0xFFFFFFFF - 12 * 3  # the largest model Ppmd7 can address (~4 GiB)


def _ppmd_bytes(data, order, mem):
    encoder = pyppmd.Ppmd7Encoder(order, mem)
    return len(encoder.encode(data)) + len(encoder.flush(endmark=False))  # the length is known


def ppmd_primed_bytes(prime, contents, order=PPMD_ORDER, mem=None):
    """Coded bytes of each content when PPMd has first coded `prime` (and not the other contents):
    code length(prime + content) - code length(prime), exactly, with one pass over prime.

    The encoder cannot be copied, and coding prime again per file would cost n_files passes over
    it; instead a forked child codes each content from a copy-on-write snapshot of the primed
    model, which costs a few page copies and leaves the parent's model as it was. PPMd restarts
    from an empty model when its memory fills, which would throw the priming away: mem defaults
    to PPMD_MEM_PER_BYTE per priming byte. Of it, only the part the model uses becomes resident."""
    mem = mem or min(PPMD_MAX_MEM, PPMD_MEM_PER_BYTE * len(prime) + (16 << 20))
    if not hasattr(os, "fork"):  # Windows: the definition itself, n_files times slower
        alone = _ppmd_bytes(prime, order, mem)
        return [_ppmd_bytes(prime + c, order, mem) - alone for c in contents]
    encoder = pyppmd.Ppmd7Encoder(order, mem)
    encoder.encode(prime)
    sizes = []
    for content in contents:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: code the content after prime, send the bytes it took, never return
            try:
                n = len(encoder.encode(content)) + len(encoder.flush(endmark=False))
                os.write(write, n.to_bytes(8, "little"))
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            reply = pipe.read()
        os.waitpid(pid, 0)
        if len(reply) != 8:
            raise RuntimeError("PPMd: the child process coding a file failed (out of memory?)")
        sizes.append(int.from_bytes(reply, "little"))
    ending = len(encoder.flush(endmark=False))  # what ending the stream right after prime costs
    return [n - ending for n in sizes]


# zstd -19 with a dictionary trained on the training split (zstd's COVER trainer), each held-out
# file compressed alone with it. Its samples are the training files cut like the held-out
# contents (the files' heads): on the stdlib they beat whole files (1.93 vs 2.07 bits per byte
# at 256 KB) and train ~10x faster. The dictionary's size is chosen per kind, in LEARNED below;
# ZSTD_DICT_BYTES is the size for a kind with no entry there (the trainer gives up beyond ~1/8 of
# the samples' bytes and the samples themselves become the dictionary).
ZSTD_DICT_BYTES = 384 << 10


def zstd_dictionary(train_contents, sample_bytes, dict_bytes=ZSTD_DICT_BYTES):
    """A zstd dictionary trained on the first sample_bytes of each training content."""
    samples = [c[:sample_bytes] for c in train_contents if c]
    try:
        return zstandard.train_dictionary(dict_bytes, samples, level=ZSTD_LEVEL)
    except zstandard.ZstdError:  # too few samples to train on: their bytes become the dictionary
        raw = b"".join(samples)[-dict_bytes:]
        return zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


# The learned codecs' settings per kind of file (its extension): (PPMd order, zstd dictionary
# bytes), each the best on a validation split of that kind's training files, never its test split:
# `python data.py tune DIR` carves a tenth of DIR's files out by a hash of their names, primes
# the codecs with the rest and prints every setting's bits per byte on the held-out tenth (cut to
# the context the model reads). The command beside each entry chose it; RESULTS.md has the sweeps.
LEARNED = {
    # python data.py tune stdlib: PPMd 1.129 at order 32 (24: 1.135, 64: 1.647), zstd 1.788 at 384 KiB
    "py": (32, 384 << 10),
    # python data.py tune data/shakespeare/train --max_bytes 4112: PPMd 1.930 at order 8,
    # zstd 2.737 at 512 KiB (the default list's largest; --dict_kib 768 1024: 2.703, 2.662: slow to
    # train, and far above PPMd, the best learned figure either way)
    "txt": (8, 512 << 10),
    # python data.py tune data/image-tiles/train --max_bytes 3152: PPMd 2.978 at order 16,
    # zstd 3.525 at 512 KiB, the default list's largest; with --dict_kib 512 768 1024: 3.525,
    # 3.515, 3.524
    "bmp": (16, 768 << 10),
    # python data.py tune data/spoken-digits/train --max_bytes 8176 (built with --limit 1000):
    # PPMd 1.769 at order 24 (16 and 32: 1.769 too), zstd 2.122 at 128 KiB
    "wav": (24, 128 << 10),
    # python data.py tune data/abc-midi/train --ext mid --max_bytes 0 (notebook 05's build):
    # PPMd 0.741 at order 32, zstd 1.674 at 128 KiB
    "mid": (32, 128 << 10),
    # python data.py tune data/cpu_20000/train --max_bytes 105 (notebook 06's traces):
    # PPMd 3.134 at order 16 (8: 3.150, 32: 3.147), zstd 4.854 at 256 KiB
    "bin": (16, 256 << 10),
}
LEARNED_DEFAULT = (PPMD_ORDER, ZSTD_DICT_BYTES)  # any other kind


def learned_setting(ext=None):
    """The learned codecs' setting for files with extension ext, in words: "PPMd order 6, zstd
    dictionary 128 KiB" (the default setting for a kind LEARNED has no entry for)."""
    order, dict_bytes = LEARNED.get(ext, LEARNED_DEFAULT)
    return f"PPMd order {order}, zstd dictionary {dict_bytes >> 10} KiB"


def _ppmd_prime(train_contents):
    # the training contents in order, all of them up to PPMD_MAX_MEM / PPMD_MEM_PER_BYTE = 64 MB
    # (beyond that, the last 64 MB: more would overflow PPMd's memory and restart its model)
    return b"".join(train_contents)[-(PPMD_MAX_MEM // PPMD_MEM_PER_BYTE):]


def learned_bits_per_byte(train_contents, contents, *, ext=None, ppmd_order=None,
                          zstd_dict_bytes=None):
    """{"ppmd": x, "zstd_dict": x}: bits per byte on contents of the two codecs primed with the
    training contents (lists of bytes), set as LEARNED says for files of extension ext (an order
    or a size given here wins). PPMd is primed with the training contents in order (the last
    64 MB of them at most); zstd's samples are the training contents cut to the longest held-out
    content, as the held-out contents are each file's first bytes."""
    order, dict_bytes = LEARNED.get(ext, LEARNED_DEFAULT)
    order, dict_bytes = ppmd_order or order, zstd_dict_bytes or dict_bytes
    ppmd, zstd = sweep_learned(train_contents, contents, [order], [dict_bytes])
    return {"ppmd": ppmd[order], "zstd_dict": zstd[dict_bytes]}


def baselines(train_contents, contents, ext=None):
    """Every baseline on contents (the held-out bytes the model was scored on, a list of bytes),
    the learned ones primed with train_contents and set for files of extension ext (LEARNED),
    plus "best_classic" and "best_learned": the smallest figure of each family."""
    classic = classic_bits_per_byte(contents)
    learned = learned_bits_per_byte(train_contents, contents, ext=ext)
    return {**classic, "best_classic": min(classic.values()),
            **learned, "best_learned": min(learned.values())}


def sweep_learned(train_contents, contents, orders, dict_sizes):
    """The learned codecs at every setting, primed with train_contents, on contents:
    ({PPMd order: bits per byte}, {zstd dictionary bytes: bits per byte})."""
    longest = max(map(len, contents), default=1)
    zstd = {}
    for size in dict_sizes:
        dictionary = zstd_dictionary(train_contents, longest, size)
        zstd[size] = _bits_per_byte([_zstd(c, dictionary) for c in contents], contents)
    prime = _ppmd_prime(train_contents)
    ppmd = {order: _bits_per_byte(ppmd_primed_bytes(prime, contents, order), contents)
            for order in orders}
    return ppmd, zstd


def validation_split(names, fraction=0.1):
    """(kept, held out): indices into names (file names, relative to their folder), the held-out
    ones those whose hash falls below fraction; the same names give the same split on every
    machine, in any order. Salted, so that it is not stdlib_files' own eval split again."""
    kept, held_out = [], []
    for i, name in enumerate(names):
        h = int(hashlib.sha1(f"validation/{name}".encode()).hexdigest()[:8], 16)
        (held_out if h / 0xFFFFFFFF < fraction else kept).append(i)
    return kept, held_out


def scored_contents(dataset):
    """The bytes content_bpb is measured on: each held-out file's content inside the context."""
    P = dataset.patch_size
    out = []
    for i in range(len(dataset)):
        ids = dataset.ids(i)[P:]
        out.append(bytes(ids[:ids.index(EOP)] if EOP in ids else ids))
    return out


def training_contents(dataset):
    """The training files' bytes, for the compressors that learn from the training split."""
    return [open(f, "rb").read() for f in dataset.sources]


def compare_with_baselines(model_bpb, train_ds, eval_ds):
    """The compressors on exactly the bytes the model was scored on (eval_ds's contents): the
    best of those that code each file alone, and the best of those that learn from the training
    split as the model did. Returns (baselines(), a line that sets them beside model_bpb)."""
    ext = dataset_ext(eval_ds)
    base = baselines(training_contents(train_ds), scored_contents(eval_ds), ext)
    order, dict_bytes = LEARNED.get(ext, LEARNED_DEFAULT)
    setting = {"ppmd": f" (order {order})", "zstd_dict": f" ({dict_bytes >> 10} KiB dictionary)"}
    parts = [f"model {model_bpb:.3f}"]
    for kind in ("classic", "learned"):
        best = base[f"best_{kind}"]
        name = next(k for k, v in base.items() if v == best and not k.startswith("best_"))
        ratio = model_bpb / best if best else float("inf")  # (a codec can take 0 bytes)
        parts.append(f"best {kind}: {name}{setting.get(name, '')} {best:.3f} "
                     f"(the model needs {ratio:.2f}x its bits)")
    return base, "held-out content bits/byte: " + " | ".join(parts)


def dataset_ext(dataset):
    """The extension all of a dataset's files share (its LEARNED key), or None: files of several
    kinds, or a conversion's (input, target) pairs, whose scored bytes mix two kinds."""
    exts = {None if isinstance(s, tuple) else file_ext(s) for s in dataset.sources}
    return exts.pop() if len(exts) == 1 else None


# ---------------------------------------------------------------------------------------------
# The default dataset: the standard library of the Python running this script


def stdlib_files(eval_fraction=0.05):
    """The .py files of this interpreter's standard library (site-packages excluded), split
    into (train, eval) by a hash of the path relative to the stdlib folder: the split is the same
    on every machine with the same Python, and independent of file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(root.rglob("*.py"))
             if "site-packages" not in p.parts and p.stat().st_size > 0]
    train, held_out = [], []
    for p in files:
        h = int(hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest()[:8], 16)
        (held_out if h / 0xFFFFFFFF < eval_fraction else train).append(p)
    return train, held_out


# ---------------------------------------------------------------------------------------------
# Command line


TUNE_MAX_BYTES = (128 - 1) * 16  # train.py's default run: 128 patches of 16 bytes, one the header
TUNE_ORDERS = [2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 64]
TUNE_DICT_KIB = [32, 64, 128, 256, 384, 512]


def build_parser():
    """data.py's commands and flags (a test parses every documented command through it)."""
    import cpu  # numpy and tqdm, needed by this command only

    parser = argparse.ArgumentParser(prog="data.py", description="bGPT data tools.",
                                     formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("cpu", help="write random CPU-state traces (the machine of cpu.py)",
                            formatter_class=HelpFormatter)
    c.add_argument("--out", required=True, help="output folder; gets train/ and test/ inside")
    c.add_argument("--count", type=int, required=True, help="number of training traces")
    c.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    c.add_argument("--test_count", type=int, default=None,
                   help="number of held-out test traces (default: max(1, count // 10))")
    c.add_argument("--memory_size", type=int, default=cpu.MEMORY_SIZE,
                   help="memory bytes, a multiple of 4 up to 1024 (release: 1024)")
    c.add_argument("--num_registers", type=int, default=cpu.NUM_REGISTERS,
                   help="registers A.. (release: 10, making 16-byte states)")
    c.add_argument("--min_program", type=int, default=cpu.MIN_PROGRAM,
                   help="fewest random instructions per program, before the final HLT")
    c.add_argument("--max_program", type=int, default=cpu.MAX_PROGRAM,
                   help="most random instructions per program, at most memory_size/4 - 1")
    show = commands.add_parser("show", help="print a file's patches", formatter_class=HelpFormatter)
    show.add_argument("file", help="file to show")
    show.add_argument("--patch_size", type=int, default=16, help="bytes per patch")
    t = commands.add_parser("tune", formatter_class=HelpFormatter,
                            help="choose the learned baselines' settings on a validation split")
    t.add_argument("dir", help="folder of training files, or 'stdlib': the default run's "
                               "training split")
    t.add_argument("--ext", default=None,
                   help="only the files with this extension (e.g. mid: a conversion's targets)")
    t.add_argument("--max_bytes", type=int, default=TUNE_MAX_BYTES,
                   help="the validation files' first bytes scored, as the model's context holds "
                        "them: (max_patches - 1) x patch_size; 0: whole files "
                        f"(default: {TUNE_MAX_BYTES}, the default run's (128 - 1) x 16)")
    t.add_argument("--val_fraction", type=float, default=0.1,
                   help="share of the files held out as the validation split")
    t.add_argument("--max_files", type=int, default=500,
                   help="most validation files scored, evenly spaced in name order (PPMd codes "
                        "each in a process of its own: ~10 ms a file and order); 0: all")
    t.add_argument("--orders", type=int, nargs="+", default=TUNE_ORDERS,
                   help="PPMd orders to try, 2 to 64")
    t.add_argument("--dict_kib", type=int, nargs="+", default=TUNE_DICT_KIB,
                   help="zstd dictionary sizes to try, in KiB")
    for p in (parser, c, show, t):
        p.error = fail  # a bad flag gets one line and exit code 2, without the usage block
    return parser


def tune(args):
    """python data.py tune DIR: the learned codecs at every setting on a validation split of
    DIR's files, primed with the rest; prints a table per codec and the best of each."""
    if args.max_bytes < 0:
        fail(f"--max_bytes must be at least 0, not {args.max_bytes}")
    if args.max_files < 0:
        fail(f"--max_files must be at least 0, not {args.max_files}")
    if not 0 < args.val_fraction < 1:
        fail(f"--val_fraction must lie in (0, 1), not {args.val_fraction}")
    if bad := [o for o in args.orders if not 2 <= o <= 64]:
        fail(f"--orders: PPMd's order lies in 2..64, not {bad[0]}")
    if bad := [k for k in args.dict_kib if k < 1]:
        fail(f"--dict_kib must be at least 1, not {bad[0]}")
    if args.dir == "stdlib":  # train.py's default split; only its training files
        root = Path(sysconfig.get_paths()["stdlib"])
        files = [f for f in stdlib_files()[0] if args.ext in (None, file_ext(f))]
    elif os.path.isdir(args.dir):
        root = Path(args.dir)
        try:
            files = list_files(root, {args.ext} if args.ext else None)
        except (OSError, ValueError) as e:  # no files, a broken link, an unreadable file
            fail(str(e))
    else:
        fail(f"no such folder: {args.dir} (give a folder of training files, or 'stdlib')")
    kept, held_out = validation_split([f.relative_to(root).as_posix() for f in files],
                                      args.val_fraction)
    if not kept or not held_out:
        fail(f"{args.dir}: {len(files)} files{f' of .{args.ext}' if args.ext else ''} are too "
             f"few to hold {args.val_fraction:.0%} out and prime with the rest")
    if args.max_files and len(held_out) > args.max_files:  # the others are primed with neither
        held_out = held_out[::-(-len(held_out) // args.max_files)]
    start = time.time()
    train_contents = [files[i].read_bytes() for i in kept]
    cut = args.max_bytes or None  # 0: whole files
    contents = [files[i].read_bytes()[:cut] for i in held_out]
    exts = sorted({file_ext(files[i]) for i in held_out})
    print(f"{args.dir}: {len(kept)} files ({sum(map(len, train_contents)):,} bytes) prime the "
          f"codecs; {len(held_out)} validation files (.{', .'.join(exts)}), "
          + (f"their first {args.max_bytes:,} bytes" if cut else "whole")
          + f": {sum(map(len, contents)):,} bytes scored")
    ppmd, zstd = sweep_learned(train_contents, contents, args.orders,
                               [k << 10 for k in args.dict_kib])
    print("\nPPMd order   bits per byte")
    for order, bpb in ppmd.items():
        print(f"{order:10d}   {bpb:.4f}")
    print("\nzstd -19 dictionary   bits per byte")
    for size, bpb in zstd.items():
        print(f"{size >> 10:15d} KiB   {bpb:.4f}")
    order, size = min(ppmd, key=ppmd.get), min(zstd, key=zstd.get)
    print(f"\nbest: PPMd order {order} ({ppmd[order]:.4f} bits per byte), zstd dictionary "
          f"{size >> 10} KiB ({zstd[size]:.4f}); {time.time() - start:.0f} s")
    kind = exts[0] if len(exts) == 1 else "EXT"
    print(f'LEARNED entry: "{kind}": ({order}, {size >> 10} << 10)')
    return 0


def main(argv=None):
    import cpu

    args = build_parser().parse_args(argv)

    if args.command == "cpu":
        if args.count < 1:
            fail(f"--count must be at least 1, not {args.count}")
        if args.test_count is not None and args.test_count < 0:
            fail(f"--test_count must be at least 0, not {args.test_count}")
        error = cpu.size_error(args.memory_size, args.num_registers, args.min_program,
                               args.max_program)
        if error:
            fail(error)
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            fail(f"--out: {args.out} is a file, not a folder")
        train_paths, test_paths = cpu.write_cpu_dataset(
            args.out, args.count, args.seed, args.test_count, args.memory_size,
            args.num_registers, args.min_program, args.max_program)
        print(f"wrote {len(train_paths)} train and {len(test_paths)} test traces to {args.out}")
        return 0
    if args.command == "tune":
        return tune(args)

    P = args.patch_size
    if P < 1:
        fail(f"--patch_size must be at least 1, not {P}")
    if not os.path.isfile(args.file):
        fail(f"no such file: {args.file}")
    ids = encode(Path(args.file).read_bytes(), file_ext(args.file), P)
    for n in range(0, len(ids), P):
        print(f"{n // P:5d}  " + " ".join("EOP" if i == EOP else f"{i:3d}" for i in ids[n:n + P]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
