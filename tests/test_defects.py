"""train.py and data.py against the defects a new user met: each test names the behaviour it
pins (a flag silently ignored, a misleading message, a state that leaked across a resume)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import devices
import train
from conftest import ROOT, TINY, run, word_files

# conftest's tiny model, evaluated only when a test asks (and then on 4 files)
TINY = [*TINY, "--eval_interval", "100", "--eval_max_files", "4"]


def records(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]


@pytest.fixture
def words_dir(tmp_path):
    return word_files(tmp_path / "words", grow=10)


@pytest.fixture
def force_native_bf16(monkeypatch):
    """Pretend this CPU has native bf16, so that --dtype auto would pick bf16 here."""
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)


# ---------------------------------------------------------------------------------------------
# --dtype


def test_dtype_flag_overrides_the_automatic_choice(force_native_bf16):
    x = torch.randint(0, 257, (2, 4 * 16))
    model = train.BGPT(train.BGPTConfig(max_patches=4, hidden_size=32, n_heads=2, patch_layers=1,
                                        byte_layers=1))
    cpu = torch.device("cpu")
    for dtype, expected in [("auto", torch.bfloat16), ("bfloat16", torch.bfloat16),
                            ("float32", torch.float32)]:
        with devices.autocast(cpu, dtype):
            logits, _ = model(x)
        assert logits.dtype == expected, dtype
    assert devices.uses_bf16(torch.device("mps"), "bfloat16")
    assert not devices.uses_bf16(torch.device("cuda"), "float32")


def test_dtype_float32_pins_training_and_evaluation(tmp_path, words_dir, monkeypatch,
                                                    force_native_bf16):
    """--dtype float32 on a bf16 CPU computes what an fp32-only CPU computes: losses and held-out
    figures equal to the last digit."""
    common = ["--train_dir", str(words_dir), *TINY, "--max_steps", "2"]
    pinned = train.train([*common, "--out_dir", str(tmp_path / "a"), "--dtype", "float32"])
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    plain = train.train([*common, "--out_dir", str(tmp_path / "b")])
    assert pinned["loss"] == plain["loss"] and pinned["content_bpb"] == plain["content_bpb"]
    loss = [r["loss"] for r in records(tmp_path / "a") if "loss" in r]
    assert loss == [r["loss"] for r in records(tmp_path / "b") if "loss" in r]


def test_dtype_must_be_one_of_three(tmp_path):
    r = run("train.py", "--dtype", "float16", "--out_dir", str(tmp_path / "o"))
    assert r.returncode == 2 and "--dtype" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# The one-line error without an import circle


def test_data_imports_no_script_and_fail_lives_there():
    """data.py holds fail(); importing it loads neither train.py nor sample.py."""
    code = ("import sys, data; assert 'train' not in sys.modules and 'sample' not in sys.modules;"
            " import train; assert train.fail is data.fail")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------
# --eval_dir is honoured wherever it is given


@pytest.fixture
def random_dir(tmp_path):
    """Files of random bytes: no codec gets far under 8 bits per byte on them."""
    d = tmp_path / "random"
    d.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        (d / f"r{i}.bin").write_bytes(bytes(torch.randint(0, 256, (300,), generator=g).tolist()))
    return d


def test_eval_dir_without_train_dir_scores_that_folder(random_dir):
    """A run on the default stdlib data with --eval_dir scores --eval_dir's files."""
    cfg = train.TrainConfig(eval_dir=str(random_dir))
    mcfg = train.BGPTConfig(max_patches=16, hidden_size=32, n_heads=2)
    train_ds, held = train.load_data(cfg, mcfg)
    assert sorted(p.name for p in held.sources) == ["r0.bin", "r1.bin", "r2.bin"]
    default_train, _ = train.load_data(train.TrainConfig(), mcfg)
    assert train_ds.sources == default_train.sources  # the stdlib's training split, unchanged


def test_resume_with_a_new_eval_dir_scores_it_and_trains_on_the_same_files(tmp_path, words_dir,
                                                                          random_dir):
    out = tmp_path / "out"
    common = [*TINY, "--dtype", "float32"]
    train.train(["--train_dir", str(words_dir), "--out_dir", str(out), "--max_steps", "2",
                 *common])
    result = train.train(["--resume", "--out_dir", str(out), "--eval_dir", str(random_dir)])
    assert result["best_classic_bpb"] > 7.5  # the baselines scored random bytes
    # A run that held files out keeps training on the same files when resumed with a folder.
    cfg = train.TrainConfig(train_dir=str(words_dir), eval_dir=str(random_dir))
    mcfg = train.BGPTConfig(max_patches=16, hidden_size=32, n_heads=2)
    resumed, _ = train.load_data(cfg, mcfg, hold_out=True)
    first, _ = train.load_data(train.TrainConfig(train_dir=str(words_dir)), mcfg)
    assert resumed.sources == first.sources
    # A run that held nothing out has no held-out files of its own to fall back on.
    with pytest.raises(ValueError, match="--eval_dir"):
        train.load_data(train.TrainConfig(train_dir=str(words_dir)), mcfg, hold_out=False)


# ---------------------------------------------------------------------------------------------
# --resume with new flags: applied and said, or refused


def test_every_flag_is_listed_as_fixed_or_free_on_resume():
    names = [f.name for cls in (train.TrainConfig, train.BGPTConfig) for f in
             train.fields(cls)]
    control = {"out_dir", "resume", "overwrite", "init_from", "preset"}
    for name in names:
        listed = [name in train.RESUME_FIXED, name in train.RESUME_FREE, name in control]
        assert sum(listed) == 1, name


def test_resume_applies_new_optimizer_flags_and_says_so(tmp_path, words_dir, capsys):
    out = tmp_path / "out"
    train.train(["--train_dir", str(words_dir), "--out_dir", str(out), "--max_steps", "4",
                 *TINY, "--dtype", "float32", "--lr", "2e-3", "--warmup_steps", "1"])
    capsys.readouterr()
    train.train(["--resume", "--out_dir", str(out), "--max_steps", "8", "--lr", "1e-5",
                 "--min_lr", "1e-6", "--beta2", "0.99", "--weight_decay", "0.01"])
    said = capsys.readouterr().out
    assert "lr 1e-05 (was 0.002)" in said and "beta2 0.99 (was 0.95)" in said
    lrs = [r["lr"] for r in records(out) if "lr" in r and r["step"] > 4]
    assert lrs and max(lrs) <= 1e-5 and min(lrs) >= 1e-6
    state = torch.load(out / "ckpt.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [g["betas"] for g in groups] == [(0.9, 0.99)] * 2 or \
        [list(g["betas"]) for g in groups] == [[0.9, 0.99]] * 2
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert state["config"]["train"]["lr"] == 1e-5


def test_resume_refuses_what_the_checkpoint_fixes(tmp_path, words_dir, capsys):
    out = tmp_path / "out"
    train.train(["--train_dir", str(words_dir), "--out_dir", str(out), "--max_steps", "2",
                 *TINY, "--dtype", "float32"])
    for flag in [["--seed", "1"], ["--loss_skip_bytes", "16"], ["--eval_fraction", "0.5"],
                 ["--classify"], ["--hidden_size", "64"], ["--init_from", str(out / "ckpt.pt")]]:
        with pytest.raises(SystemExit) as e:
            train.train(["--resume", "--out_dir", str(out), *flag])
        assert e.value.code == 2 and flag[0] in capsys.readouterr().err, flag


# ---------------------------------------------------------------------------------------------
# Classification and --loss_skip_bytes: refused (training would pool other patches than
# evaluation and sample.classify)


def test_classify_with_loss_skip_bytes_is_refused(tmp_path):
    r = run("train.py", "--classify", "--loss_skip_bytes", "16", "--out_dir", str(tmp_path / "o"))
    assert r.returncode == 2 and "--loss_skip_bytes" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# An all-masked batch is named as such; the learning-rate hint only for a real non-finite loss


def test_an_all_masked_batch_is_named_and_no_lr_is_blamed(tmp_path, capsys):
    d = tmp_path / "short"
    d.mkdir()
    for i in range(6):
        (d / f"s{i}.txt").write_bytes(b"abc" * (i + 1))  # all inside a 32-byte skipped prefix
    with pytest.raises(SystemExit) as e:
        train.train(["--train_dir", str(d), "--out_dir", str(tmp_path / "o"), *TINY,
                     "--loss_skip_bytes", "32", "--max_steps", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "all-masked batch" in err and "--lr" not in err


def test_a_real_non_finite_loss_suggests_a_lower_lr(tmp_path, words_dir, capsys):
    with pytest.raises(SystemExit) as e:  # a learning rate of 1e6 sends the weights to inf
        train.train(["--train_dir", str(words_dir), "--out_dir", str(tmp_path / "o"), *TINY,
                     "--lr", "1e6", "--warmup_steps", "0", "--grad_clip", "0",
                     "--max_steps", "20", "--dtype", "float32"])
    assert e.value.code == 2 and "--lr" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# --help: truthful defaults, describing the flag


def help_of(parse, capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: join them


def test_train_help_states_every_default_truthfully(capsys):
    text = help_of(train.parse_args, capsys).split("options:")[1]  # the flags, not the docstring
    assert "(default: )" not in text and "512 x 16" not in text and "768 / 12" not in text
    assert "minutes" not in text and "(release" not in text
    for f in [*train.fields(train.TrainConfig), *train.fields(train.BGPTConfig)]:
        flag_help = text.split(f"--{f.name} ", 1)[1].split(" --", 1)[0]
        assert "(default:" in flag_help, f.name
    assert "--max_patches int context in patches" in text and "(default: 128)" in text


def test_sample_help_shows_defaults_and_convert_agrees_with_the_function(capsys):
    sample = pytest.importorskip("sample")
    import inspect
    text = help_of(sample.build_parser().parse_args, capsys)
    assert "(default: 3)" in text and "(default: )" not in text and "(default: None)" not in text
    parser_default = sample.build_parser().parse_args([]).max_new_bytes
    assert parser_default == inspect.signature(sample.convert).parameters["max_new_bytes"].default


# ---------------------------------------------------------------------------------------------
# Docstring commands name folders a builder writes


def test_train_docstring_names_folders_that_builders_write():
    import re
    builders = pytest.importorskip("builders")
    written = {f"data/{name}/{split}" for name in builders.BUILDERS for split in builders.SPLITS}
    named = set(re.findall(r"data/[\w-]+/\w+", train.__doc__))
    assert named and named <= written, named - written


# ---------------------------------------------------------------------------------------------
# train.py's shape: a loop like nanoGPT's, what sample.py alone needs in sample.py


def test_the_loop_has_no_closures_and_no_exit_inside():
    import ast
    tree = ast.parse(open(os.path.join(ROOT, "train.py")).read())
    loop_fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    assert not [n for n in ast.walk(loop_fn) if isinstance(n, (ast.FunctionDef, ast.Lambda))
                and n is not loop_fn]
    loops = [n for n in ast.walk(loop_fn) if isinstance(n, ast.While)]
    assert loops
    calls = [ast.unparse(n.func) for loop in loops for n in ast.walk(loop)
             if isinstance(n, ast.Call)]
    assert "sys.exit" not in calls and "fail" not in calls


def test_sample_only_names_live_in_sample_and_baselines_beside_the_baselines():
    import data
    import sample
    assert not hasattr(train, "load_model") and callable(sample.load_model)
    for name in ("compare_with_baselines", "scored_contents", "training_contents"):
        assert callable(getattr(data, name))
        assert vars(train).get(name, getattr(data, name)) is getattr(data, name)  # no copy


def test_time_spent_evaluating_and_saving_is_left_out_of_the_next_log_line(tmp_path, words_dir,
                                                                             monkeypatch):
    """A fake clock: each training step takes 1 s, each evaluation and checkpoint 100 s. With an
    evaluation between two log lines, the log still says 1,000 ms per step."""
    clock = [0.0]
    monkeypatch.setattr(train.time, "time", lambda: clock[0])

    def slow(f, seconds):
        def wrapped(*a, **k):
            clock[0] += seconds
            return f(*a, **k)
        return wrapped
    monkeypatch.setattr(train, "train_step", slow(train.train_step, 1.0))
    monkeypatch.setattr(train, "evaluate_and_log", slow(train.evaluate_and_log, 100.0))
    monkeypatch.setattr(train, "save", slow(train.save, 100.0))
    train.train(["--train_dir", str(words_dir), *TINY, "--max_steps", "8", "--log_interval", "4",
                 "--eval_interval", "3", "--out_dir", str(tmp_path / "out")])
    steps = [r for r in records(tmp_path / "out") if "ms_per_step" in r]
    assert [r["step"] for r in steps] == [4, 8]
    assert [r["ms_per_step"] for r in steps] == [1000.0, 1000.0]
