"""
Files -> bytes -> patches: the data side of bGPT (arXiv:2402.19155).

A file of n bytes with extension "txt" becomes, with P = 16:

    [t x t EOP EOP ... EOP]            header patch: the extension's UTF-8 bytes, padded with EOP
    [b0 b1 ... b15] ... [b.. EOP EOP]  the content, its last patch padded with EOP
    [EOP EOP ... EOP]                  end patch

EOP = 256 never occurs inside content, so decoding drops the header and stops at the first EOP.
This module also holds the datasets for the three uses of the paper (generation, conversion,
classification), the collate function, the CPU-state machine and the default dataset (this
Python's own standard library).

    python data.py cpu --out data/cpu --count 1000     # write random CPU traces (see cpu.py)
    python data.py show FILE                            # print a file's patches
"""

import argparse
import bz2
import gzip
import hashlib
import lzma
import os
import random
import sys
import sysconfig
from pathlib import Path

import torch

EOP = 256  # end-of-patch id (the same constant as bgpt.EOP; data.py does not import the model)


# ---------------------------------------------------------------------------------------------
# Encoding and decoding


def encode(content: bytes, ext: str, patch_size=16) -> list:
    """Bytes and extension -> ids in the released format (header, content, end patch)."""
    header = list(ext.encode("utf-8")[:patch_size])
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
    keep = max_patches - 1  # content patches that fit beside the header
    if mode == "head":
        start = 1
    elif mode == "random":
        start = rng.choice([1, rng.randint(1, n - keep), n - keep])  # head, body, tail
    else:
        raise ValueError(f"crop mode must be 'head' or 'random', not {mode!r}")
    return ids[:P] + ids[start * P:(start + keep) * P]


# ---------------------------------------------------------------------------------------------
# Datasets: one item = one training sequence built from one file or a pair of files


def list_files(root, exts=None):
    """Every file under root (sorted, hidden files skipped), optionally only these extensions."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")
             and (exts is None or file_ext(p) in exts)]
    if not files:
        raise FileNotFoundError(f"data folder {root} holds no files" + (f" with extension {sorted(exts)}" if exts else ""))
    return files


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
        raise FileNotFoundError(f"no file pairs for {spec!r} (paired files share a name, e.g. x.abc and x.mid)")
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
        P = self.patch_size
        paths = self.sources[i] if isinstance(self.sources[i], tuple) else (self.sources[i],)
        ids = []
        for k, path in enumerate(paths):
            file_ids = encode(Path(path).read_bytes(), file_ext(path), P)
            ids += file_ids if k == len(paths) - 1 else file_ids[:-P]  # input: no end patch
        return crop(ids, self.max_patches, P, self.crop_mode, self.rng)

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


LZMA_MIN_DICT_BYTES = 4096  # the smallest dictionary liblzma accepts


def _xz(content):
    # `xz -9` settings, with a dictionary no bigger than the file: the same output, ~90x faster on
    # small files, which would otherwise each allocate the full 64 MiB dictionary.
    lzma2 = {"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": max(LZMA_MIN_DICT_BYTES, len(content))}
    return lzma.compress(content, filters=[lzma2])


COMPRESSORS = {
    "gzip": lambda content: gzip.compress(content, compresslevel=9, mtime=0),  # gzip -9
    "bz2": lambda content: bz2.compress(content, compresslevel=9),  # bzip2 -9
    "lzma": _xz,  # xz -9
}


def compressed_bits_per_byte(items, method="gzip", compressors=COMPRESSORS):
    """What a general-purpose compressor needs for the same bytes: each file (a path or bytes)
    compressed on its own, as a model codes each file on its own; total bits / total bytes."""
    blobs = [Path(i).read_bytes() if isinstance(i, (str, Path)) else bytes(i) for i in items]
    return 8 * sum(len(compressors[method](b)) for b in blobs) / max(sum(len(b) for b in blobs), 1)


# ---------------------------------------------------------------------------------------------
# The default dataset: the standard library of the Python running this script


def stdlib_files(eval_fraction=0.05):
    """The .py files of this interpreter's standard library (site-packages excluded), split
    into (train, eval) by a hash of the path relative to the stdlib folder: the split is the same
    on every machine with the same Python, and independent of file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(root.rglob("*.py")) if "site-packages" not in p.parts and p.stat().st_size > 0]
    train, held_out = [], []
    for p in files:
        h = int(hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest()[:8], 16)
        (held_out if h / 0xFFFFFFFF < eval_fraction else train).append(p)
    return train, held_out


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cpu"]:
        import cpu
        return cpu.main(argv[1:])
    parser = argparse.ArgumentParser(description="bGPT data tools. Commands: cpu (write CPU traces), show FILE")
    parser.add_argument("command", choices=["show"], help="show: print a file's patches")
    parser.add_argument("file", help="file to show")
    parser.add_argument("--patch_size", type=int, default=16, help="bytes per patch")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.file):
        parser.error(f"no such file: {args.file}")
    ids = encode(Path(args.file).read_bytes(), file_ext(args.file), args.patch_size)
    for n in range(0, len(ids), args.patch_size):
        patch = ids[n:n + args.patch_size]
        print(f"{n // args.patch_size:5d}  " + " ".join("EOP" if i == EOP else f"{i:3d}" for i in patch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
