"""The byte pipeline of data.py: the released file format, cropping, datasets, collate."""

import random

import pytest
import torch

from data import (EOP, ByteDataset, collate, conversion_pairs, crop, decode, encode, header_ext,
                  list_files, stdlib_files)


def test_worked_example_from_the_paper():
    ids = encode(b"hello", "txt")
    assert len(ids) == 3 * 16
    assert ids[:16] == list(b"txt") + [EOP] * 13
    assert ids[16:32] == list(b"hello") + [EOP] * 11
    assert ids[32:] == [EOP] * 16


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 32, 100])
@pytest.mark.parametrize("ext", ["txt", "", "mid", "ünïcødé", "a_very_long_extension_name", "日本語のファイル拡張子"])
@pytest.mark.parametrize("P", [4, 16])
def test_round_trip(n, ext, P):
    content = bytes(random.Random(n).randrange(256) for _ in range(n))
    ids = encode(content, ext, P)
    assert len(ids) % P == 0 and len(ids) == P * (2 + -(-n // P))  # header + content + end
    assert all(0 <= i <= EOP for i in ids) and ids[-P:] == [EOP] * P
    assert decode(ids, P) == content
    header = ext.encode("utf-8")[:P]
    assert ids[:len(header)] == list(header)  # cut to the patch, even mid-character
    if len(ext.encode()) <= P:
        assert header_ext(ids, P) == ext


def test_crop_keeps_header_and_patch_alignment():
    P = 4
    ids = encode(bytes(range(40)), "bin", P)  # 1 + 10 + 1 = 12 patches
    assert crop(ids, 20, P) == ids
    head = crop(ids, 5, P, "head")
    assert head == ids[:20]
    seen = set()
    for seed in range(60):
        c = crop(ids, 5, P, "random", random.Random(seed))
        assert len(c) == 20 and c[:P] == ids[:P]
        start = ids.index(c[P])  # content bytes are distinct, so this finds the window
        assert (start % P == 0) and c[P:] == ids[start:start + 16]
        seen.add(start // P)
    assert {1, 8} <= seen and len(seen) > 3  # head, tail (ends with the end patch) and bodies


def test_datasets_generation_conversion_classification(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "tune.abc").write_bytes(b"X:1\nK:G\nGAB|")
    (tmp_path / "sub" / "tune.mid").write_bytes(b"MThd" + bytes(20))
    (tmp_path / "lonely.abc").write_bytes(b"X:2")
    (tmp_path / "Sports_1.txt").write_bytes(b"goal")
    (tmp_path / "World_7.txt").write_bytes(b"news" * 10)
    files = list_files(tmp_path)
    assert len(files) == 5

    pairs = conversion_pairs(files, "abc->mid")
    assert [(a.name, b.name) for a, b in pairs] == [("tune.abc", "tune.mid")]
    assert len(conversion_pairs(files, "abc&mid")) == 2
    ds = ByteDataset(pairs, max_patches=64)
    ids, label = ds[0]
    a = encode(b"X:1\nK:G\nGAB|", "abc")
    assert ids.tolist() == a[:-16] + encode(b"MThd" + bytes(20), "mid") and label == -1

    txt = list_files(tmp_path, exts={"txt"})
    ds = ByteDataset(txt, max_patches=64, labels=True)
    assert ds.classes == ["Sports", "World"] and [ds[i][1] for i in range(2)] == [0, 1]
    x, mask, labels = collate([ds[0], ds[1]])
    assert x.shape == (2, 16 * 5) and mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert (x[0, 48:] == EOP).all() and labels.tolist() == [0, 1]


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_files(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="holds no files"):
        list_files(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no file pairs"):
        conversion_pairs(list_files(tmp_path), "abc->mid")
    with pytest.raises(ValueError, match="abc->mid"):
        conversion_pairs(list_files(tmp_path), "abc")


def test_stdlib_split_is_fixed_and_disjoint():
    train, held_out = stdlib_files()
    assert len(train) > 500 and 10 < len(held_out) < len(train) / 10
    assert not set(train) & set(held_out)
    assert stdlib_files()[1] == held_out
    assert all(torch.tensor(encode(p.read_bytes()[:64], "py")).max() <= EOP for p in held_out[:5])
