"""The model as a compressor (coder.py, sample.py --compress/--decompress): exact round trips of
every awkward length, archives the size of the model's code length, raw chunks where the model
would expand the file, clean refusals, and a decoder in another process with other thread
defaults that still restores the file."""

import math
import os
import random
import subprocess
import sys
import zlib
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import coder
import sample
from bgpt import BGPT, BGPTConfig
from data import encode

ROOT = Path(__file__).resolve().parent.parent
FLOOR_BITS = math.log2(coder.COUNT_TOTAL / (coder.COUNT_TOTAL - 256))  # 0.0056 bits per byte
CLOSE = 5  # the stream's first byte (always 0) and the 4 bytes that close it


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread, kind to a shared machine (the coder records whatever count it ran with)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def coded(monkeypatch):
    """Every chunk through the coder: an untrained model codes bytes at a hair over 8 bits, so
    by default it would store most chunks raw and leave the coder little to do."""
    monkeypatch.setattr(coder, "RAW_ABOVE_BITS", math.inf)


def save(path, model):
    config = {"train": {"classify": False}, "model": asdict(model.config)}
    torch.save({"model": model.state_dict(), "config": config, "data": {"ext": "txt"}}, path)
    return str(path)


def tiny(P=16, N=4, seed=0):
    """An untrained model: chunks of (N - 1) x P = 48 content bytes, so files cross contexts."""
    torch.manual_seed(seed)
    return BGPT(BGPTConfig(patch_size=P, max_patches=N, hidden_size=16, n_heads=2,
                           patch_layers=1, byte_layers=1, dropout=0.0)).eval()


def header_size(model, archive):
    h = coder.read_header(model, archive)
    return h["body"] + sum(n for n, raw in zip(chunk_lengths(model, h["length"]), h["raw"]) if raw)


def chunk_lengths(model, n):
    S = (model.config.max_patches - 1) * model.config.patch_size
    return [min(S, n - i) for i in range(0, n, S)]


def word_salad(n, seed=0):
    rng = random.Random(seed)
    words = "the a byte model is compressor file code of and to bits per patch context".split()
    return " ".join(rng.choice(words) for _ in range(n)).encode()[:n]


def trained(text):
    """A model overfit on text until its own code length for it is under 3 bits per byte (fp32:
    no autocast here). About 50 steps, well under a second."""
    torch.manual_seed(0)
    model = BGPT(BGPTConfig(patch_size=16, max_patches=64, hidden_size=32, n_heads=2,
                            patch_layers=1, byte_layers=1, dropout=0.0))
    x = torch.tensor([encode(text, "txt", 16)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(300):
        _, loss = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if code_length_bits(model.eval(), text) < 3 * len(text):
            return model
        model.train()
    raise AssertionError("the model did not learn the text")


def code_length_bits(model, content, ext="txt"):
    """The model's own code length for a file shorter than its context: -log2 p of every content
    byte from one parallel forward pass (the way train.py scores bits per byte)."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([encode(content, ext, model.config.patch_size)]))
    logp = torch.log_softmax(logits[0, :len(content)].float(), dim=-1)
    return -logp[torch.arange(len(content)), torch.tensor(list(content))].sum().item() / math.log(2)


@pytest.fixture(scope="module")
def salad_model():
    text = word_salad(900)  # under the 63 x 16 = 1,008 content bytes of one context
    return trained(text), text


# ---------------------------------------------------------------------------------------------
# Round trips


CONTENTS = {
    "empty": b"",
    "one byte": b"x",
    "one patch": b"0123456789abcdef",
    "17 bytes": b"0123456789abcdefg",
    "one context": bytes(range(48)),
    "one context + 1": bytes(range(49)),
    "not a multiple of 16": b"hello, compressor " * 5 + b"!",
    "several contexts": word_salad(48 * 5 + 7),
    "random bytes": random.Random(1).randbytes(301),
    "every byte value": bytes(range(256)) + bytes(range(255, -1, -1)),
}


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("name", CONTENTS)
def test_round_trip_is_exact(name, batch_size, coded):
    model, content = tiny(), CONTENTS[name]
    archive = sample.compress(model, content, "txt", batch_size=batch_size)
    assert not any(coder.read_header(model, archive)["raw"])
    assert sample.decompress(model, archive) == (content, "txt")


@pytest.mark.parametrize("name", ["several contexts", "every byte value"])
def test_round_trip_of_raw_chunks_is_exact(name, monkeypatch):
    monkeypatch.setattr(coder, "RAW_ABOVE_BITS", 0)  # every chunk stored raw
    model, content = tiny(), CONTENTS[name]
    archive = sample.compress(model, content, "txt", batch_size=2)
    assert all(coder.read_header(model, archive)["raw"])
    assert sample.decompress(model, archive) == (content, "txt")


@pytest.mark.parametrize("ext", ["", "py", "a.very.long.extension.name",
                                 b"\xff\xfe.\xc3".decode("utf-8", "surrogateescape")])
def test_the_extension_comes_back_even_when_it_is_not_utf8(ext, coded):
    model = tiny()
    assert sample.decompress(model, sample.compress(model, b"some bytes", ext)) == (b"some bytes",
                                                                                   ext)


# ---------------------------------------------------------------------------------------------
# Sizes


def test_archive_is_the_models_code_length(salad_model):
    model, text = salad_model
    bits = code_length_bits(model, text)
    assert bits <= 3 * len(text)  # a model that knows the file: an untrained one codes at ~8
    archive = sample.compress(model, text, "txt")
    header = header_size(model, archive)
    assert len(archive) <= header + CLOSE + 1.01 * bits / 8
    # Coding with 256 counts (EOP's probability shared out) is no longer than the model's bits.
    assert len(archive) - header - CLOSE <= bits / 8 + len(text) * FLOOR_BITS / 8
    assert sample.decompress(model, archive) == (text, "txt")


@pytest.mark.parametrize("which", ["untrained", "trained on text"])
def test_random_bytes_cost_at_most_8_bits_a_byte(which, salad_model):
    model = tiny() if which == "untrained" else salad_model[0]
    content = random.Random(2).randbytes(2000)
    archive = sample.compress(model, content, "bin")
    h = coder.read_header(model, archive)
    # Chunks the model would code in more than 8 bits a byte are stored raw: all of them for the
    # model trained on text, those where chance made the untrained one a little worse than even.
    assert all(h["raw"]) or which == "untrained"
    assert len(archive) <= h["body"] + CLOSE + len(content) * (8 + FLOOR_BITS) / 8
    assert sample.decompress(model, archive) == (content, "bin")


def test_raw_and_coded_chunks_mix(salad_model):
    model, text = salad_model
    noise = random.Random(3).randbytes(1008)
    content = word_salad(1008) + noise + text  # chunk 1 is noise: raw; chunks 0 and 2 coded
    archive = sample.compress(model, content, "txt", batch_size=2)
    assert coder.read_header(model, archive)["raw"] == [False, True, False]
    assert len(archive) < len(content) * 0.7
    assert sample.decompress(model, archive) == (content, "txt")


# ---------------------------------------------------------------------------------------------
# Refusals: one line, exit code 2, nothing written


@pytest.fixture
def archived(tmp_path, coded):
    model = tiny()
    ckpt = save(tmp_path / "model.pt", model)
    archive = sample.compress(model, word_salad(200), "txt", batch_size=2)
    return ckpt, archive, model


def refused(tmp_path, ckpt, archive, capsys):
    src, out = tmp_path / "in.bgpt", tmp_path / "out.txt"
    src.write_bytes(archive)
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", ckpt, "--decompress", str(src), "--output", str(out),
                     "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and str(src) in err
    assert not out.exists()
    return err


def test_refusals(tmp_path, archived, capsys):
    ckpt, archive, model = archived
    other = save(tmp_path / "other.pt", tiny(seed=1))
    assert "another model" in refused(tmp_path, other, archive, capsys)
    assert "version 7" in refused(tmp_path, ckpt, archive[:4] + b"\x07" + archive[5:], capsys)
    assert "not a bGPT archive" in refused(tmp_path, ckpt, b"PK\x03\x04" + archive[4:], capsys)
    body = header_size(model, archive)
    for cut in (5, 20, body - 1, body + 2, len(archive) - 1):
        assert "truncated" in refused(tmp_path, ckpt, archive[:cut], capsys)
    # (Not the stream's last bytes: the coder closes with more bits than decoding needs, so a flip
    # there may still decode to the same file, which its CRC-32 then confirms.)
    for at in (10, body - 6, body + 3, (body + len(archive)) // 2):
        bad = bytearray(archive)
        bad[at] ^= 0x10
        assert "corrupt" in refused(tmp_path, ckpt, bytes(bad), capsys)


def rebuilt(model, archive, platform=None, probe=None):
    """The archive with its header's platform or first-byte CRC replaced (and its CRC redone)."""
    h = coder.read_header(model, archive)
    fields_at = coder.ARCHIVE_HEAD.size
    ext_at = fields_at + coder.ARCHIVE_FIELDS.size
    where_at = ext_at + 1 + archive[ext_at]
    fields = list(coder.ARCHIVE_FIELDS.unpack_from(archive, fields_at))
    fields[-1] = fields[-1] if probe is None else probe
    where = h["platform"].encode() if platform is None else platform
    head = (archive[:fields_at] + coder.ARCHIVE_FIELDS.pack(*fields) + archive[ext_at:where_at]
            + bytes([len(where)]) + where + archive[where_at + 1 + archive[where_at]:h["body"] - 4])
    return head + zlib.crc32(head).to_bytes(4, "little") + archive[h["body"]:]


def test_a_machine_whose_floats_differ_is_named(archived):
    """Counts of the first byte that differ from the encoder's (as on a CPU with other vector
    kernels, here faked in the header) stop the decoder before it decodes, naming both
    platforms; a stream that fails later on another platform is blamed on the floats too."""
    _, archive, model = archived
    assert sample.decompress(model, rebuilt(model, archive))[0] == word_salad(200)
    first = coder.read_header(model, archive)["probe"]
    with pytest.raises(ValueError, match="computes the model's floats differently.*'cpu .* x1, "
                                         "torch .*; this is 'cpu "):
        sample.decompress(model, rebuilt(model, archive, probe=first ^ 1))
    moved = bytearray(rebuilt(model, archive, platform=b"cuda NVIDIA H100 80GB HBM3, torch 2.13"))
    moved[(coder.read_header(model, bytes(moved))["body"] + len(moved)) // 2] ^= 0x10
    with pytest.raises(ValueError, match="floats differently from the one that coded the archive "
                                         r"\('cuda NVIDIA H100.*this is 'cpu"):
        sample.decompress(model, bytes(moved))


# ---------------------------------------------------------------------------------------------
# Another process, other defaults


def test_the_decoder_runs_with_the_encoders_thread_count(monkeypatch, coded):
    """The thread count can change a matmul's rounding: the header carries the encoder's and the
    decoder computes with it, then hands the caller's back."""
    model, seen = tiny(), []
    counts = coder.byte_counts
    monkeypatch.setattr(coder, "byte_counts",
                        lambda logits: seen.append(torch.get_num_threads()) or counts(logits))
    torch.set_num_threads(2)
    archive = sample.compress(model, CONTENTS["several contexts"], "txt")
    torch.set_num_threads(1)
    seen.clear()
    assert sample.decompress(model, archive)[0] == CONTENTS["several contexts"]
    assert set(seen) == {2} and torch.get_num_threads() == 1


@pytest.mark.slow
def test_another_process_with_other_thread_defaults_restores_the_file(tmp_path, capsys, coded):
    model = tiny()
    ckpt = save(tmp_path / "model.pt", model)
    name = tmp_path / os.fsdecode(b"notes.\xff\xfe")  # a name that is not UTF-8
    content = word_salad(48 * 3 + 5) + random.Random(4).randbytes(60)
    name.write_bytes(content)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the archive records 2; the decoder below starts with 1
    try:
        sample.main(["--ckpt", ckpt, "--compress", str(name), "--output",
                     str(tmp_path / "a.bgpt"), "--batch_size", "2", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert "bits per byte" in capsys.readouterr().out
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--ckpt", ckpt,
                           "--decompress", str(tmp_path / "a.bgpt"), "--output",
                           str(tmp_path / "back"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "back").read_bytes() == content
    assert "extension '\\udcff\\udcfe'" in proc.stdout
