"""notebooks/helpers.py, the code the tutorial notebooks share: what its figure labels and what
its comparisons print are what the notebooks' prose quotes."""

import json

import matplotlib

matplotlib.use("Agg")  # no display: the figure is only inspected
import matplotlib.pyplot as plt  # noqa: E402

from notebooks import helpers  # noqa: E402

# A baselines record as data.baselines writes it (bits per byte), with its two summaries.
BASE = {"deflate": 4.3, "lzma2": 4.7, "bzip2": 4.8, "brotli": 3.8, "zstd": 4.4,
        "best_classic": 3.8, "ppmd": 1.1, "zstd_dict": 2.3, "best_learned": 1.1}


def test_best_picks_the_lowest_of_each_family():
    assert helpers.best(BASE, "classic") == ("brotli", 3.8)
    assert helpers.best(BASE, "learned") == ("ppmd", 1.1)


def test_compare_sets_the_model_against_the_strongest(capsys):
    rows = helpers.compare("bGPT", 2.2, BASE)
    assert rows == [("bGPT", 2.2), ("best classic: brotli", 3.8), ("best learned: ppmd", 1.1)]
    out = capsys.readouterr().out
    assert "against the best of them (best learned: ppmd): bGPT spends 100% MORE bits" in out
    assert "best_" not in out.split("every compressor:")[1]  # the summaries are not compressors
    rows = helpers.compare("bGPT", 0.9, BASE, codec=("PNG", 1.5))  # a format's own codec
    assert rows[-1] == ("PNG", 1.5)
    assert "(best learned: ppmd): bGPT spends 18% fewer bits" in capsys.readouterr().out


def test_read_log_splits_the_records(tmp_path):
    records = [{"step": 10, "loss": 2.0, "bpb": 2.9}, {"step": 10, "eval": {"bpb": 3.1}},
               {"step": 20, "loss": 1.5, "bpb": 2.2}, {"step": 20, "baselines": BASE}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    steps, evals, base = helpers.read_log(tmp_path)
    assert [r["step"] for r in steps] == [10, 20]
    assert evals == [(10, {"bpb": 3.1})]
    assert base == BASE
    (tmp_path / "log.jsonl").write_text(json.dumps(records[0]) + "\n")
    assert helpers.read_log(tmp_path)[2] is None  # a run that has not finished


def test_command_is_typed_from_the_repository_root():
    flags = ["--train_dir", "../data/x/train", "--out_dir", "../out/x", "--max_steps", "5"]
    assert helpers.command(flags) == ("python train.py --train_dir data/x/train --out_dir out/x "
                                      "--max_steps 5")


def test_mean_spread():
    assert helpers.mean_spread([0.5, 0.7]) == "60.0% ± 14.1% (50.0%-70.0%, 2 seeds)"
    assert helpers.mean_spread([0.5]) == "50.0% ± 0.0% (50.0%-50.0%, 1 seeds)"


def test_draw_model_labels_the_shapes_of_the_size_given():
    fig = helpers.draw_model(P=4, N=8, C=32, patch_layers=2, byte_layers=1)
    texts = [t.get_text() for t in fig.axes[0].texts]
    plt.close(fig)
    assert "(B, N, P) = (B, 8, 4)" in texts
    assert "logits (B·(N-1), P, V) = (B·7, 4, 257)" in texts
    assert "patch decoder: 2 GPT-2 blocks, causal over patches" in texts


def test_code_length_bits_is_what_the_coder_spends():
    """The bits the notebook sets beside an archive are the coder's own, chunk by chunk: summed
    from the coder's integer counts on its one-step path, they agree to a small fraction."""
    import math

    import torch

    import coder
    from bgpt import BGPT, BGPTConfig

    torch.manual_seed(0)
    model = BGPT(BGPTConfig(hidden_size=32, patch_layers=1, byte_layers=1, n_heads=2,
                            max_patches=4, dropout=0)).eval()
    content = bytes(range(40, 140))  # 100 bytes: chunks of 48, 48 and 4
    S = coder.chunk_size(model)
    chunks = [content[i:i + S] for i in range(0, len(content), S)]
    spent = 0.0

    def symbol(i, t, cum):
        nonlocal spent
        b = chunks[i][t]
        low = cum[b - 1] if b else 0
        spent += math.log2(cum[-1] / (cum[b] - low))
        return b

    with coder.coding_settings(model, torch.get_num_threads()):
        coder.code_chunks(model, [len(c) for c in chunks], "txt", 2, symbol)
    bits = helpers.code_length_bits(model, content, "txt", batch_size=2)
    assert abs(bits - spent) < 0.01 * spent


def test_bmp_pixel_bits_reads_rows_bottom_up_and_sums_a_pixels_three_bytes():
    """Bits laid out as the BMP's own bytes: one lit pixel comes back at its place, costing the
    sum of its blue, green and red bytes; a width of 5 checks the row padding (15 -> 16 bytes)."""
    import numpy as np

    import builders

    for height, width in ((32, 32), (3, 5)):
        rgb = np.zeros((height, width, 3), np.uint8)
        rgb[1, 2] = (10, 20, 40)  # row 1 from the top, column 2
        bits = np.frombuffer(builders.bmp_bytes(rgb), np.uint8).astype(float)
        bits[:54] = 99  # the header is not a pixel
        heat = helpers.bmp_pixel_bits(bits, width, height)
        assert heat.shape == (height, width)
        assert heat[1, 2] == 70 and heat.sum() == 70


def test_byte_bits_gives_every_byte_its_bits_whatever_the_batch():
    import numpy as np
    import torch

    from bgpt import BGPT, BGPTConfig

    torch.manual_seed(0)
    model = BGPT(BGPTConfig(hidden_size=32, patch_layers=1, byte_layers=1, n_heads=2,
                            max_patches=8, dropout=0)).eval()
    contents = [bytes(range(50, 100)), b"ab" * 30, b"x"]
    one_by_one = helpers.byte_bits(model, contents, "txt", batch_size=1)
    together = helpers.byte_bits(model, contents, "txt", batch_size=3)
    assert [len(b) for b in together] == [len(c) for c in contents]
    for a, b in zip(one_by_one, together):
        assert (a > 0).all() and np.allclose(a, b, atol=1e-4)


def test_simulation_seeds_prints_mean_and_range_per_opcode(capsys):
    def F(x):  # sample.simulate's three figures, all x
        return {"byte_accuracy": x, "state_accuracy": x, "computed_accuracy": x}

    def run(x):  # one seed's simulation: the model at x, copy-fetch at 0.2 whatever the seed
        figures = {"model": {"one_step": F(x), "free": F(x / 2)},
                   "copy_fetch": {"one_step": F(0.2), "free": F(0.1)}}
        return {**figures, "traces": 3, "states": 12,
                "by_opcode": {"ADD": {"states": 5, "computed_bytes": 4, **figures},
                              "HLT": {"states": 2, "computed_bytes": 0, **figures}}}

    helpers.simulation_seeds([run(0.5), run(0.7), run(0.9)])
    out = capsys.readouterr().out
    assert "free      whole states    model 35.0% ± 10.0% (25.0%-45.0%, 3 seeds) | copy-fetch 10.0%" in out
    add = next(line for line in out.splitlines() if line.startswith("ADD"))
    assert add.split() == ["ADD", "5", "4", "70.0", "(50.0-90.0)", "35.0", "(25.0-45.0)",
                           "70.0", "(50.0-90.0)", "20.0"]
    assert "HLT" not in out  # executed nothing: no computed byte to score


def test_target_bits_of_a_file_alone_are_byte_bits_and_later_bytes_never_change_earlier_bits():
    import numpy as np
    import torch

    from bgpt import BGPT, BGPTConfig

    torch.manual_seed(0)
    model = BGPT(BGPTConfig(hidden_size=32, patch_layers=1, byte_layers=1, n_heads=2,
                            max_patches=12, dropout=0)).eval()
    content = bytes(range(60, 100))
    bits, hits = helpers.target_bits(model, content, "mid")
    assert len(bits) == len(hits) == len(content) + 1  # the bytes and the EOP after them
    assert np.allclose(bits[:-1], helpers.byte_bits(model, [content], "mid")[0], atol=1e-4)
    source = b"X:1\nT:tune\nK:C\nCDEF|"
    given, _ = helpers.target_bits(model, content, "mid", source, "abc")
    assert not np.allclose(given, bits)  # the source is read
    changed = content[:20] + b"!" + content[21:]
    after, _ = helpers.target_bits(model, changed, "mid", source, "abc")
    assert np.allclose(after[:20], given[:20], atol=1e-5) and after[20] != given[20]


def test_midi_parts_labels_each_byte_of_a_small_file():
    track = (b"\x00\xff\x03\x03Abc"  # delta 0, the title "Abc"
             b"\x00\x90\x3c\x50"  # delta 0, note on: pitch 60, velocity 80
             b"\x83\x60\x80\x3c\x00"  # delta 480 (two bytes), note off
             b"\x00\xff\x2f\x00")  # end of track
    mid = b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk" + len(track).to_bytes(4, "big") + track
    parts = helpers.midi_parts(mid)
    assert len(parts) == len(mid) + 1 and parts[-1] == "end marker (EOP)"
    assert parts[:22] == ["MThd + MTrk"] * 18 + ["track length"] * 4
    assert parts[22:30] == ["delta times"] + ["meta events"] * 3 + ["text copied from ABC"] * 3 + ["delta times"]
    assert parts[30:33] == ["note on/off status", "pitch", "velocity"]
    assert parts[33:38] == ["delta times"] * 2 + ["note on/off status", "pitch", "velocity"]
    assert parts[38:42] == ["delta times"] + ["meta events"] * 3
    assert helpers.midi_title(mid) == b"Abc" and helpers.midi_title(b"\x00\x90\x3c") is None
    assert len(helpers.midi_parts(mid[:-3] + b"\x83")) == len(mid) - 1  # cut short: still a label each
