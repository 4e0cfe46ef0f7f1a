"""The compressors the model's bits per byte is set against (data.py), and the format codecs
(builders.py): each must code what it claims, with no container bytes the model does not pay."""
import gzip
import io
import random
from pathlib import Path

import numpy as np
import pytest

import builders
import data

TEXT = Path(data.__file__).read_bytes()[:2032]  # source code, like the default run's files


def test_raw_deflate_is_gzip_without_its_18_container_bytes():
    content = b"a" * 10000
    coded = data.CLASSIC["deflate"](content)
    assert 8 * coded / len(content) < 0.1
    assert coded <= len(gzip.compress(content, 9, mtime=0)) - 18


def test_no_codec_spends_container_bytes_on_an_empty_file():
    # gzip writes 20 bytes for nothing, zlib 8, xz 32, bzip2 14, a zstd frame 9
    for name, code in data.CLASSIC.items():
        assert code(b"") <= 5, name


def test_classic_codecs_gain_on_text_and_not_on_noise():
    noise = random.Random(0).randbytes(4096)
    text = data.classic_bits_per_byte([TEXT])
    rand = data.classic_bits_per_byte([noise])
    assert set(text) == {"deflate", "lzma2", "bzip2", "brotli", "zstd"}
    assert all(2 < bpb < 5 for bpb in text.values()), text
    assert all(8 <= bpb < 9 for bpb in rand.values()), rand
    # files are coded one by one: two files cost the sum of their sizes
    both = data.classic_bits_per_byte([TEXT, noise])
    n = len(TEXT) + len(noise)
    expected = (text["lzma2"] * len(TEXT) + rand["lzma2"] * len(noise)) / n
    assert both["lzma2"] == pytest.approx(expected)


def test_forked_ppmd_priming_equals_its_definition():
    # code length(prime + content) - code length(prime), computed the slow way for every file
    prime = Path(builders.__file__).read_bytes()[:20000]
    contents = [TEXT[:700], TEXT[700:], b"", bytes(range(256))]
    for order in (4, 32):
        mem = 16 << 20
        alone = data._ppmd_bytes(prime, order, mem)
        slow = [data._ppmd_bytes(prime + c, order, mem) - alone for c in contents]
        assert data.ppmd_primed_bytes(prime, contents, order, mem) == slow


def test_ppmd_priming_with_the_file_itself_helps_and_with_noise_does_not():
    unprimed = data.ppmd_primed_bytes(b"", [TEXT])[0]
    mem = 16 << 20
    assert unprimed == data._ppmd_bytes(TEXT, 32, mem) - data._ppmd_bytes(b"", 32, mem)
    primed = data.ppmd_primed_bytes(TEXT, [TEXT])[0]
    assert 8 * primed / len(TEXT) < 0.2 and 8 * unprimed / len(TEXT) > 2
    noise = random.Random(1).randbytes(50_000)
    assert data.ppmd_primed_bytes(noise, [TEXT])[0] > 0.9 * unprimed


def _records(n, seed=0, words_seed=0):
    """n files of 40 lines each, built from the same 400 made-up words: files like each other."""
    words_rng, rng = random.Random(words_seed), random.Random(seed)
    words = [bytes(words_rng.choices(b"abcdefghijklmnop", k=words_rng.randint(3, 9)))
             for _ in range(400)]

    def line():
        name, tag = rng.choice(words), rng.choice(words)
        return b"name=%s; value=%d; tag=%s\n" % (name, rng.randint(0, 99), tag)
    return [b"".join(line() for _ in range(40)) for _ in range(n)]


def test_zstd_dictionary_trained_on_similar_files_beats_none():
    train, held_out = _records(60), _records(5, seed=1)
    without = sum(data._zstd(c) for c in held_out)
    dictionary = data.zstd_dictionary(train, 2048, 16 << 10)
    assert sum(data._zstd(c, dictionary) for c in held_out) < 0.8 * without
    few = data.zstd_dictionary(train[:3], 2048)  # too few samples to train on: a raw dictionary
    assert sum(data._zstd(c, few) for c in held_out) < without


def test_learned_baselines_beat_classic_ones_on_files_like_their_training_files():
    train, held_out = _records(60), _records(5, seed=1)
    every = data.baselines(train, held_out)
    classic = data.classic_bits_per_byte(held_out)
    assert {k: every[k] for k in classic} == classic
    assert every["best_classic"] == min(classic.values())
    assert every["best_learned"] == min(every["ppmd"], every["zstd_dict"])
    assert every["ppmd"] < 0.8 * every["best_classic"]
    assert every["zstd_dict"] < 0.8 * classic["zstd"]


# --- format codecs (builders.py) ----------------------------------------------------------------

def _colour_type(png):
    assert png[12:16] == b"IHDR"
    return png[25]  # signature 8, chunk length 4, "IHDR" 4, width 4, height 4, bit depth 1


def test_png_is_greyscale_exactly_when_r_g_b_agree_and_then_smaller():
    y, x = np.mgrid[:32, :32]
    noise = np.random.default_rng(0).integers(0, 24, (32, 32))
    grey = np.repeat(((x * 5 + y * 3 + noise) % 256)[..., None], 3, -1).astype(np.uint8)
    almost = grey.copy()
    almost[5, 7, 0] ^= 1  # one red value off: the image needs RGB
    assert _colour_type(builders.png_bytes(grey)) == builders.PNG_GREY
    assert _colour_type(builders.png_bytes(almost)) == builders.PNG_RGB
    assert len(builders.png_bytes(grey)) < 0.6 * len(builders.png_bytes(almost))


def test_png_decodes_to_the_same_pixels_grey_and_rgb():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:32, :32]
    smooth = np.stack([x * 8, y * 8, (x + y) * 4], -1).astype(np.uint8)  # favours sub/up/Paeth
    grey = np.repeat(rng.integers(0, 256, (32, 32, 1), dtype=np.uint8), 3, -1)
    for rgb in (smooth, grey, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)):
        back = Image.open(io.BytesIO(builders.png_bytes(rgb))).convert("RGB")
        assert np.array_equal(np.asarray(back), rgb)


def test_png_is_no_bigger_than_pillows_optimised_png():
    Image = pytest.importorskip("PIL.Image")
    y, x = np.mgrid[:32, :32]
    rgb = np.stack([x * 8, (x * y) % 256, (x + y) * 4], -1).astype(np.uint8)
    for pixels, mode in ((rgb, "RGB"), (rgb[..., 1], "L")):
        ours = builders.png_bytes(pixels if mode == "RGB" else np.repeat(pixels[..., None], 3, -1))
        theirs = io.BytesIO()
        Image.fromarray(pixels).save(theirs, "PNG", optimize=True)  # mode L or RGB
        assert len(ours) <= len(theirs.getvalue()), mode


# --- the learned codecs' settings per kind, and the sweep that chooses them (data.py tune) ------

def _write(folder, contents, ext):
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(contents):
        (folder / f"r{i:03d}.{ext}").write_bytes(c)
    return folder


def test_tune_prints_every_setting_and_picks_the_smallest(tmp_path, capsys):
    folder = _write(tmp_path / "train", _records(30), "txt")
    assert data.main(["tune", str(folder), "--orders", "2", "6", "--dict_kib", "4", "16",
                      "--val_fraction", "0.3", "--max_bytes", "500"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    n_val = int(head.split("; ")[1].split()[0])
    assert 0 < n_val < 30 and "first 500 bytes" in head and f"{500 * n_val:,} bytes scored" in head
    rows = [line.split() for line in out.splitlines() if line[:1] == " "]
    ppmd = {int(r[0]): float(r[1]) for r in rows if len(r) == 2}
    zstd = {int(r[0]): float(r[2]) for r in rows if len(r) == 3}
    assert set(ppmd) == {2, 6} and set(zstd) == {4, 16}
    order, kib = min(ppmd, key=ppmd.get), min(zstd, key=zstd.get)
    assert f"best: PPMd order {order} ({ppmd[order]:.4f}" in out
    assert f"zstd dictionary {kib} KiB ({zstd[kib]:.4f})" in out
    assert f'"txt": ({order}, {kib} << 10)' in out
    # the printed figures are the sweep's: a held-out file the codecs were never primed with
    names = [f"r{i:03d}.txt" for i in range(30)]
    kept, held = data.validation_split(names, 0.3)
    assert len(held) == n_val and not set(kept) & set(held)
    train = [(folder / names[i]).read_bytes() for i in kept]
    val = [(folder / names[i]).read_bytes()[:500] for i in held]
    assert data.sweep_learned(train, val, [order], [kib << 10])[0][order] == \
        pytest.approx(ppmd[order], abs=5e-5)


def test_validation_split_depends_on_the_names_only():
    names = [f"dir/file{i}.py" for i in range(400)]
    kept, held = data.validation_split(names, 0.1)
    assert 20 < len(held) < 60 and sorted(kept + held) == list(range(400))
    shuffled = names[::-1]
    _, held_again = data.validation_split(shuffled, 0.1)
    assert {shuffled[i] for i in held_again} == {names[i] for i in held}


@pytest.mark.parametrize("argv, message", [
    (["tune", "{tmp}/missing"], "no such folder"),
    (["tune", "{tmp}/empty"], "holds no files"),
    (["tune", "{tmp}/one"], "too few"),
    (["tune", "{tmp}/one", "--orders", "1"], "--orders"),
    (["tune", "{tmp}/one", "--dict_kib", "0"], "--dict_kib"),
    (["tune", "{tmp}/one", "--max_bytes", "-1"], "--max_bytes"),
    (["tune", "{tmp}/one", "--val_fraction", "1"], "--val_fraction"),
])
def test_tune_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "one", [b"x"], "txt")
    with pytest.raises(SystemExit) as e:
        data.main([a.format(tmp=tmp_path) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_a_kinds_setting_is_what_the_baselines_use(monkeypatch):
    used = []
    ppmd, dictionary = data.ppmd_primed_bytes, data.zstd_dictionary
    monkeypatch.setattr(data, "ppmd_primed_bytes",
                        lambda prime, contents, order: used.append(order) or ppmd(prime, contents, order))
    monkeypatch.setattr(data, "zstd_dictionary",
                        lambda t, n, size: used.append(size) or dictionary(t, n, size))
    monkeypatch.setattr(data, "LEARNED", {"xyz": (3, 8 << 10)})
    train, held_out = _records(20), _records(2, seed=1)
    data.baselines(train, held_out, ext="xyz")
    assert used == [8 << 10, 3]
    used.clear()
    data.baselines(train, held_out)  # a kind without an entry: the default setting
    assert used == [data.ZSTD_DICT_BYTES, data.PPMD_ORDER] == list(data.LEARNED_DEFAULT)[::-1]
    assert data.learned_setting("xyz") == "PPMd order 3, zstd dictionary 8 KiB"
    assert data.learned_setting("nothing-set") == data.learned_setting(None)


def test_compare_with_baselines_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "LEARNED", {"xyz": (3, 8 << 10)})
    files = sorted(_write(tmp_path, _records(12), "xyz").iterdir())
    train_ds = data.ByteDataset(files[:10], 64)
    eval_ds = data.ByteDataset(files[10:], 64)
    assert data.dataset_ext(eval_ds) == "xyz"
    base, line = data.compare_with_baselines(2.0, train_ds, eval_ds)
    learned = line.split("best learned: ")[1]
    expected = "ppmd (order 3)" if base["ppmd"] <= base["zstd_dict"] else "zstd_dict (8 KiB dictionary)"
    assert learned.startswith(f"{expected} {base['best_learned']:.3f}"), line
    pairs = data.ByteDataset([(files[0], files[1])], 64)  # a conversion: two kinds, no entry
    assert data.dataset_ext(pairs) is None


def test_the_sweeps_default_context_is_the_default_runs():
    import train
    from bgpt import BGPTConfig
    P = train.DEFAULT_MODEL.get("patch_size", BGPTConfig().patch_size)
    assert data.TUNE_MAX_BYTES == (train.DEFAULT_MODEL["max_patches"] - 1) * P


def test_notebook_compare_prints_the_kinds_setting(capsys, monkeypatch):
    from notebooks import helpers
    monkeypatch.setattr(data, "LEARNED", {"xyz": (3, 8 << 10)})
    base = {"zstd": 3.0, "lzma2": 2.9, "best_classic": 2.9, "ppmd": 2.0, "zstd_dict": 2.5,
            "best_learned": 2.0}
    helpers.compare("bGPT", 1.5, base)
    assert "PPMd order" not in capsys.readouterr().out
    helpers.compare("bGPT", 1.5, base, ext="xyz")
    assert "PPMd order 3, zstd dictionary 8 KiB" in capsys.readouterr().out
