"""The byte pipeline of data.py: the released file format, cropping, datasets, collate, and the
`show` command."""

import random

import pytest

import data
from data import (EOP, ByteDataset, collate, conversion_pairs, crop, decode, encode, file_ext,
                  header_ext, list_files, stdlib_files)


def test_worked_example_from_the_paper():
    ids = encode(b"hello", "txt")
    assert len(ids) == 3 * 16
    assert ids[:16] == list(b"txt") + [EOP] * 13
    assert ids[16:32] == list(b"hello") + [EOP] * 11
    assert ids[32:] == [EOP] * 16


def test_exact_layout_with_small_patches():
    P = 4
    assert encode(b"abcde", "py", P) == [112, 121, EOP, EOP,    # header: "py", padded
                                         97, 98, 99, 100,      # "abcd"
                                         101, EOP, EOP, EOP,   # "e", padded
                                         EOP, EOP, EOP, EOP]   # end patch
    assert encode(b"abcd", "", P) == [EOP] * 4 + [97, 98, 99, 100] + [EOP] * 4  # no padding patch
    assert encode(b"", "txt", P) == [116, 120, 116, EOP] + [EOP] * 4  # a 0-byte file: 2 patches
    assert encode(b"x", "jpeg", P)[:P] == list(b"jpeg")  # a full header has no EOP in it
    assert encode(b"x", "abcdef", P)[:P] == list(b"abcd")  # a longer extension is cut


def test_every_byte_value_survives():
    content = bytes(range(256)) + bytes(range(255, -1, -1))
    ids = encode(content, "bin")
    assert ids[16:16 + 512] == list(content)  # 0 and 255 included, nothing clipped or shifted
    assert decode(ids) == content


def test_decode_stops_at_the_first_eop():
    P = 4
    header = encode(b"", "txt", P)[:P]
    assert decode(header + [104, 105, EOP, 106, 107], P) == b"hi"  # generated ids after an EOP
    assert decode(header + [104, 105], P) == b"hi"  # no EOP at all: everything after the header
    assert decode(header, P) == b""


def test_file_ext_reads_the_last_dot():
    names = ("a.txt", "x/b.tar.gz", "Makefile", "dir.d/noext")
    assert [file_ext(n) for n in names] == ["txt", "gz", "", ""]


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 32, 100])
@pytest.mark.parametrize("ext", ["txt", "", "mid", "ünïcødé", "a_very_long_extension_name",
                                 "日本語のファイル拡張子"])
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
    assert all(p.suffix == ".py" and "site-packages" not in p.parts for p in train + held_out)
    for p in held_out[:5]:  # real files round-trip, with one id per byte plus the padding
        content = p.read_bytes()
        ids = encode(content, "py")
        assert decode(ids) == content and header_ext(ids) == "py"
        assert len(ids) == 16 * (2 + -(-len(content) // 16))


def test_show_prints_every_patch(tmp_path, capsys):
    (tmp_path / "a.txt").write_bytes(b"hello")
    assert data.main(["show", str(tmp_path / "a.txt"), "--patch_size", "4"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "    0  116 120 116 EOP",
        "    1  104 101 108 108",
        "    2  111 EOP EOP EOP",
        "    3  EOP EOP EOP EOP"]


@pytest.mark.parametrize("args, name", [(["show", "MISSING"], "MISSING"),
                                        (["show", "FILE", "--patch_size", "0"], "--patch_size"),
                                        (["shout"], "shout"), ([], "command")])
def test_command_line_errors_are_one_line(tmp_path, capsys, args, name):
    (tmp_path / "a.txt").write_bytes(b"x")
    places = {"FILE": tmp_path / "a.txt", "MISSING": tmp_path / "MISSING"}
    args = [str(places.get(a, a)) for a in args]
    with pytest.raises(SystemExit) as e:
        data.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and name in err, err
