"""
bGPT as a compressor (arXiv:2402.19155): arithmetic coding with the model's next-byte
probabilities, so that the bits per byte a run reports becomes a file that is that small and
decompresses to the original, byte for byte.

    python sample.py --ckpt out/ckpt.pt --compress FILE --output FILE.bgpt
    python sample.py --ckpt out/ckpt.pt --decompress FILE.bgpt --output COPY

    archive = compress(model, content, "txt")        # bytes -> bytes
    content, ext = decompress(model, archive)        # the same model, or a ValueError

A model that gives the next byte probability p can store it in -log2 p bits: a range coder (here,
LZMA's, with integer state) turns the probabilities into a code about that long.

    archive = header, the chunks stored raw, then one range-coder stream

The file is cut into chunks of the context, each coded from an empty context: a header patch (the
extension), then up to (N - 1) x P content bytes (63 x 16 = 1,008 at bench.py's tiny config,
511 x 16 = 8,176 at the paper's). Chunks are independent, so B of them run side by side as the B
rows of one batch, and their bytes go into the one stream in a fixed order: step t of every row of
the batch, then step t + 1. The decoder knows every row's probabilities at step t before it
decodes any byte of step t, so it follows the same order. A chunk that the model would code in
more than 8 bits per byte (noise, or compressed bytes, for a model of text) is stored as it is and
flagged in the header, so an archive is never much larger than its file.

The decoder must compute the encoder's probabilities bit for bit: one float that differs in the
last place can move a count, and every byte after it decodes as garbage. So both sides take their
logits from bgpt.Stepper, the cached one-step path, on the same shapes (the same batches of
chunks, the same rows in them), in full fp32 (never under autocast, no TF32 or bf16 inside fp32
matmuls), with the thread count the encoder used (it can change how a matmul splits its sums, so
the rounding), read from the header. What no setting fixes is the machine: another CPU's kernels
(AVX2 against AVX512) or a GPU round differently. So the header names the platform that coded the
archive and holds a CRC-32 of the first byte's counts and one of the content: a decoder whose
floats differ says so before it decodes (or, where they part later, after), and one that
succeeds has restored the file exactly.
"""

import bisect
import hashlib
import json
import math
import platform
import struct
import zlib
from contextlib import contextmanager

import torch

from bgpt import Stepper
from data import encode

ARCHIVE_MAGIC = b"bGPT"
ARCHIVE_VERSION = 1
# magic, version | fingerprint of the model, content length, batch B, threads, CRC-32 of the
# content, CRC-32 of the first step's counts (see probe); the extension and the platform (a length
# byte each); a bit per chunk, 1 if stored raw; a CRC-32 of all that. Then the raw chunks' bytes,
# then the range coder's stream.
ARCHIVE_HEAD = struct.Struct("<4sB")
ARCHIVE_FIELDS = struct.Struct("<8sQHHII")
# The model's 256 byte probabilities become integer counts summing to at most COUNT_TOTAL:
# count = 1 + floor(p * (COUNT_TOTAL - 256)). The 1 is the floor: a byte the model thinks
# impossible must still be codable. The counts sum to at most 2^16 (the p sum to 1, up to float
# rounding), and every count is at least p * (2^16 - 256), so a byte costs at most
# -log2 p + log2(2^16 / (2^16 - 256)) = -log2 p + 0.0056 bits: the floor and the rounding cost at
# most 0.0056 bits per byte (0.07% of 8). A larger total would cost less, but the coder's range
# must stay well above it (see RANGE_TOP). EOP gets no count: the content length is stored in the
# header, so no content byte is ever EOP, and the other 256 share its probability.
COUNT_TOTAL = 1 << 16
RAW_ABOVE_BITS = 8  # a chunk the model would code in more bits per byte than this is stored raw
RANGE_TOP = 1 << 24  # the coder keeps range >= 2^24, so range // total >= 2^8 at total 2^16


class RangeEncoder:
    """LZMA's range coder (7-Zip's PPMd uses the same) with multi-symbol counts. The state is an
    interval [low, low + range) of 32-bit integers; coding a symbol of count c at cumulative start
    s out of total narrows it to its slice: r = range // total, low += r * s, range = r * c. When
    range falls under 2^24, the top byte of low is settled but for a carry: it is held back
    (cache, with any 0xFF bytes after it counted in pending) until a carry can no longer reach it.
    Rounding range down to a multiple of total wastes at most total / range < 2^-8 of it."""

    def __init__(self):
        self.low, self.range = 0, 0xFFFFFFFF
        self.cache, self.pending = 0, 1  # the held byte (0 to start); it and the 0xFFs after it
        self.out = bytearray()

    def encode(self, start, count, total):
        r = self.range // total
        self.low += r * start
        self.range = r * count
        while self.range < RANGE_TOP:  # emit a byte: 8 bits of precision back
            self.range <<= 8
            self._shift_low()

    def _shift_low(self):
        if self.low < 0xFF000000 or self.low >= 1 << 32:  # the held bytes are settled
            carry = self.low >> 32  # low grew past 32 bits: add 1 to the held bytes
            self.out.append((self.cache + carry) & 0xFF)
            self.out += bytes([(0xFF + carry) & 0xFF]) * (self.pending - 1)
            self.cache, self.pending = (self.low >> 24) & 0xFF, 0
        self.pending += 1  # (a top byte of 0xFF waits: a carry would turn it to 0x00)
        self.low = (self.low & 0x00FFFFFF) << 8

    def finish(self):
        for _ in range(5):  # the held byte and the 4 bytes of low
            self._shift_low()
        return bytes(self.out)


class RangeDecoder:
    """The encoder's mirror: code = the stream's bits minus low, so the symbol is the one whose
    slice holds code // (range // total). Reads exactly the bytes the encoder wrote."""

    def __init__(self, stream):
        self.stream, self.pos = stream, 5
        if len(stream) < 5 or stream[0] != 0:  # the encoder's first byte is always 0
            raise ValueError("the archive is truncated or corrupt")
        self.code, self.range = int.from_bytes(stream[1:5], "big"), 0xFFFFFFFF

    def target(self, total):  # where code falls in [0, total)
        self.r = self.range // total
        t = self.code // self.r
        if t >= total:
            raise ValueError("the archive is corrupt or truncated")
        return t

    def decode(self, start, count):  # after target(): consume the symbol found there
        self.code -= self.r * start
        self.range = self.r * count
        while self.range < RANGE_TOP:
            if self.pos >= len(self.stream):
                raise ValueError("the archive is corrupt or truncated")
            self.code = (self.code << 8) | self.stream[self.pos]
            self.range <<= 8
            self.pos += 1


def byte_counts(logits):
    """(B, V) logits -> B lists of 256 cumulative counts: byte s has [cum[s-1], cum[s]) (cum[-1] =
    0), out of cum[255]. Integer arithmetic from here on: the floats stop at this line."""
    p = logits[:, :256].float().softmax(dim=-1)  # (B, 256): EOP dropped, the rest renormalised
    counts = (p * (COUNT_TOTAL - 256)).floor_().long() + 1  # (B, 256), every count >= 1
    return counts.cumsum(dim=-1).tolist()  # one read from the device per step


def fingerprint(model):
    """8 bytes of SHA-256 over the architecture and every weight: which model coded an archive."""
    cfg, h = model.config, hashlib.sha256()
    arch = ("patch_size", "max_patches", "hidden_size", "patch_layers", "byte_layers", "n_heads")
    h.update(json.dumps({k: getattr(cfg, k) for k in arch}, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.digest()[:8]


def coding_platform(model, device, threads):
    """What besides the weights decides the floats: the kernels (the GPU, or the CPU and the
    vector width torch's own kernels use), the threads, torch, the attention code. Stored in the
    header to name a mismatch."""
    if device.type == "cuda":
        kind = f"cuda {torch.cuda.get_device_name(device)}"
    else:
        kind = f"{device.type} {cpu_name()} {torch.backends.cpu.get_cpu_capability()} x{threads}"
    return f"{kind}, torch {torch.__version__}, attention {model.config.attention}"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0]
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def probe(model, ext, rows):
    """CRC-32 of the counts of a chunk's first byte, computed on `rows` rows as the first batch
    codes it. Counts that differ here mean this machine's floats differ from the encoder's: the
    decoder says so before it decodes a byte (later steps can still differ: the CRC of the
    content is the final word)."""
    if rows == 0:
        return 0
    x = torch.tensor([encode(b"", ext, model.config.patch_size)[:model.config.patch_size]] * rows,
                     device=next(model.parameters()).device)  # (B, P): header patches
    return zlib.crc32(str(byte_counts(Stepper(model, x).logits)).encode())


@contextmanager
def coding_settings(model, threads):
    """fp32 and `threads` threads while coding, whatever the caller had: no autocast, and fp32
    matmuls in full precision ("highest": no TF32 on a GPU, no bf16 inside oneDNN's fp32 matmuls
    on a CPU, which "medium" allows); eval mode (no dropout)."""
    device = next(model.parameters()).device
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("the coder computes in fp32: load the model with float32 weights")
    saved = torch.get_num_threads(), torch.get_float32_matmul_precision(), model.training
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision("highest")
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            yield device
    finally:
        torch.set_num_threads(saved[0])
        torch.set_float32_matmul_precision(saved[1])
        model.train(saved[2])


def chunk_size(model):
    """Content bytes per chunk: the context less its header patch (63 x 16 = 1,008 at the tiny
    config, 511 x 16 = 8,176 at the paper's)."""
    if model.config.max_patches < 2:
        raise ValueError("a one-patch context holds the header and no content: nothing to code")
    return (model.config.max_patches - 1) * model.config.patch_size


def code_chunks(model, lengths, ext, batch_size, symbol, batch_done=lambda rows: None):
    """Run chunks of these lengths through bgpt.Stepper, batch_size side by side, and call
    symbol(i, t, cum) for byte t of chunk i with its cumulative counts; symbol returns the byte
    (the encoder knows it, the decoder finds it); then batch_done(rows) after each batch. The
    encoder and the decoder both run this: the same batches, inputs and calls in the same order."""
    device, P = next(model.parameters()).device, model.config.patch_size
    header = encode(b"", ext, P)[:P]  # the extension's patch, as for training files
    for first in range(0, len(lengths), batch_size):
        rows = range(first, min(first + batch_size, len(lengths)))
        steps = Stepper(model, torch.tensor([header] * len(rows), device=device))  # (B, P)
        n = max(lengths[i] for i in rows)
        for t in range(n):
            cums = byte_counts(steps.logits)
            nxt = [symbol(i, t, cum) if t < lengths[i] else 0 for i, cum in zip(rows, cums)]
            if t + 1 < n:  # a row that has ended feeds 0s, on both sides alike
                steps.push(torch.tensor(nxt, device=device))
        batch_done(rows)


def compress(model, content, ext="", *, batch_size=8):
    """content (bytes) and its extension -> an archive (bytes) that decompress() restores with the
    same model. batch_size chunks of the context are coded side by side (the archive records it).
    A chunk that the model would code in more than 8 bits per byte is stored raw instead (flagged
    in the header), so an archive is never much larger than its file."""
    content = bytes(content)
    if isinstance(ext, bytes):  # raw name bytes, as os.fsencode gives them
        ext = ext.decode("utf-8", "surrogateescape")
    raw_ext = ext.encode("utf-8", "surrogateescape")  # a name need not be UTF-8 (data.encode)
    if len(raw_ext) > 255:
        raise ValueError(f"the extension has {len(raw_ext)} bytes; an archive holds at most 255")
    if not 1 <= batch_size < 1 << 16:
        raise ValueError(f"batch_size must be in 1..65535, not {batch_size}")
    S = chunk_size(model)
    chunks = [content[i:i + S] for i in range(0, len(content), S)]
    threads, enc, raw, batch = torch.get_num_threads(), RangeEncoder(), [], []

    def symbol(i, t, cum):  # held back until the batch ends and says which chunks go raw
        b = chunks[i][t]
        low = cum[b - 1] if b else 0
        batch.append((i, low, cum[b] - low, cum[-1]))
        return b

    def batch_done(rows):  # a raw chunk still ran through the model: the others' rows are as coded
        bits = dict.fromkeys(rows, 0.0)
        for i, _, count, total in batch:
            bits[i] += math.log2(total / count)
        raw.extend(bits[i] > RAW_ABOVE_BITS * len(chunks[i]) for i in rows)
        for i, low, count, total in batch:
            if not raw[i]:
                enc.encode(low, count, total)
        batch.clear()

    with coding_settings(model, threads) as device:
        code_chunks(model, [len(c) for c in chunks], ext, batch_size, symbol, batch_done)
        first = probe(model, ext, min(batch_size, len(chunks)))
        where = coding_platform(model, device, threads).encode()[:255]
    flags = sum(1 << i for i, r in enumerate(raw) if r).to_bytes(-(-len(chunks) // 8), "little")
    head = (ARCHIVE_HEAD.pack(ARCHIVE_MAGIC, ARCHIVE_VERSION)
            + ARCHIVE_FIELDS.pack(fingerprint(model), len(content), batch_size, threads,
                                  zlib.crc32(content), first)
            + bytes([len(raw_ext)]) + raw_ext + bytes([len(where)]) + where + flags)
    stored = b"".join(c for c, r in zip(chunks, raw) if r)
    return head + zlib.crc32(head).to_bytes(4, "little") + stored + enc.finish()


def read_header(model, archive):
    """Check an archive's header against this model: a ValueError says what is wrong."""
    if len(archive) < ARCHIVE_HEAD.size or archive[:4] != ARCHIVE_MAGIC:
        raise ValueError("not a bGPT archive (compress files with sample.py --compress)")
    version = archive[4]
    if version != ARCHIVE_VERSION:
        raise ValueError(f"archive format version {version}; this code reads version "
                         f"{ARCHIVE_VERSION}")
    try:
        at = ARCHIVE_HEAD.size + ARCHIVE_FIELDS.size
        fields = ARCHIVE_FIELDS.unpack_from(archive, ARCHIVE_HEAD.size)
        ext = archive[at + 1:at + 1 + archive[at]]
        at += 1 + len(ext)
        where = archive[at + 1:at + 1 + archive[at]].decode(errors="replace")
        at += 1 + archive[at]
    except (struct.error, IndexError):
        raise ValueError("the archive is truncated (its header is incomplete)") from None
    length, batch_size, threads, content_crc, first = fields[1:]
    S = chunk_size(model)
    n_chunks = -(-length // S)
    flags = archive[at:at + -(-n_chunks // 8)]
    at += -(-n_chunks // 8)
    crc = zlib.crc32(archive[:at]).to_bytes(4, "little")
    if at + 4 > len(archive) or archive[at:at + 4] != crc:
        raise ValueError("the archive's header is corrupt or truncated (its CRC-32 differs)")
    mine = fingerprint(model)
    if fields[0] != mine:
        raise ValueError(f"the archive was compressed with another model (fingerprint "
                         f"{fields[0].hex()}; this model's is {mine.hex()})")
    raw = [bool(flags[i // 8] >> (i % 8) & 1) for i in range(n_chunks)]
    return dict(length=length, batch_size=batch_size, threads=threads, crc=content_crc, raw=raw,
                probe=first, ext=ext.decode("utf-8", "surrogateescape"), platform=where,
                body=at + 4)


def decompress(model, archive):
    """An archive from compress() -> (content, ext). A ValueError names what is wrong: not an
    archive, another format version, another model, truncated or corrupt, or made on a platform
    whose floats differ from this one's."""
    archive = bytes(archive)
    h = read_header(model, archive)
    S = chunk_size(model)
    lengths = [min(S, h["length"] - i) for i in range(0, h["length"], S)]
    chunks, at = [], h["body"]
    for n, raw in zip(lengths, h["raw"]):  # the raw chunks' bytes come first, then the stream
        chunks.append(bytearray(archive[at:at + n] if raw else b""))
        at += n if raw else 0
    if at > len(archive):
        raise ValueError("the archive is truncated")
    dec = RangeDecoder(archive[at:])

    def symbol(i, t, cum):
        if h["raw"][i]:
            return chunks[i][t]
        b = bisect.bisect_right(cum, dec.target(cum[-1]))  # the byte whose slice holds it
        low = cum[b - 1] if b else 0
        dec.decode(low, cum[b] - low)
        chunks[i].append(b)
        return b

    with coding_settings(model, h["threads"]) as device:
        here = coding_platform(model, device, h["threads"])
        floats = (f"this machine computes the model's floats differently from the one that coded "
                  f"the archive ({h['platform']!r}; this is {here!r}), so its stream cannot "
                  "decode here: decode it on a machine like the first")
        if not all(h["raw"]) and probe(model, h["ext"], min(h["batch_size"], len(lengths))) \
                != h["probe"]:
            raise ValueError(floats)
        try:
            code_chunks(model, lengths, h["ext"], h["batch_size"], symbol)
            content = b"".join(chunks)
            if dec.pos != len(dec.stream) or zlib.crc32(content) != h["crc"]:
                raise ValueError("the decoded bytes fail the archive's CRC-32: it is corrupt")
        except ValueError as e:
            if h["platform"] != here:
                raise ValueError(floats) from None
            raise ValueError(f"{e} (or this machine's floats part from the encoder's within the "
                             f"file, though both are {here!r}: a library setting such as "
                             "MKL_ENABLE_INSTRUCTIONS can do that)") from None
    return content, h["ext"]
