"""train.py and sample.py end to end on tiny models: the command line, exact resume, the three
modes, released checkpoints, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

import train
from bgpt import BGPT
from tests.test_bgpt import official_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--hidden_size", "32", "--n_heads", "2", "--patch_layers", "1", "--byte_layers", "1", "--max_patches", "16",
        "--batch_size", "2", "--warmup_steps", "2", "--log_interval", "2", "--eval_interval", "3"]


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    for i in range(12):
        (d / f"{['news', 'poem'][i % 2]}_{i}.txt").write_bytes((b"the cat sat on the mat. " if i % 2 else b"0123456789, ") * (i + 2))
    return d


def test_train_then_sample_from_the_command_line(tmp_path, text_dir):
    out = tmp_path / "out"
    r = run("train.py", "--train_dir", str(text_dir), "--out_dir", str(out), "--max_steps", "4", *TINY)
    assert r.returncode == 0, r.stderr
    assert "bytes/s" in r.stdout and "lzma" in r.stdout and (out / "ckpt.pt").exists()
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    assert {"loss", "bpb", "lr", "ms_per_step", "bytes_per_s"} <= set(records[0])
    assert any("eval" in r and "content_bpb" in r["eval"] for r in records)
    r = run("sample.py", "--ckpt", str(out / "ckpt.pt"), "--out_dir", str(tmp_path / "s"), "--max_new_bytes", "40")
    assert r.returncode == 0, r.stderr
    assert "bytes/s" in r.stdout and len(list((tmp_path / "s").glob("sample_*.txt"))) == 3


def test_resume_is_exact(tmp_path, text_dir):
    """2n steps in one go == n steps, then a resumed run for n more: the same weights."""
    common = ["--train_dir", str(text_dir), *TINY, "--dropout", "0.1", "--lr_decay_steps", "6"]
    train.train([*common, "--out_dir", str(tmp_path / "a"), "--max_steps", "6"])
    train.train([*common, "--out_dir", str(tmp_path / "b"), "--max_steps", "3"])
    train.train(["--resume", "--out_dir", str(tmp_path / "b"), "--max_steps", "6"])
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_schedule_reaches_the_optimizer():
    cfg = train.TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    model = torch.nn.Linear(2, 2)
    opt = train.make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: train.lr_factor(s, cfg))
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # warm-up
    assert lrs[60] == pytest.approx(0.55, abs=0.01) and lrs[-1] == pytest.approx(0.1, abs=1e-3)  # cosine
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # matrices only


def test_conversion_mode(tmp_path):
    d = tmp_path / "music"
    d.mkdir()
    for i in range(6):
        (d / f"tune{i}.abc").write_bytes(b"X:%d\nK:G\nGAB" % i)
        (d / f"tune{i}.mid").write_bytes(b"MThd%d" % i)
    out = tmp_path / "out"
    train.train(["--train_dir", str(d), "--convert", "abc->mid", "--out_dir", str(out), "--max_steps", "3", *TINY])
    r = run("sample.py", "--ckpt", str(out / "ckpt.pt"), "--convert", str(d), "--to", "mid",
            "--out_dir", str(tmp_path / "conv"), "--max_new_bytes", "32", "--top_k", "1")
    assert r.returncode == 0, r.stderr
    assert "byte-identical" in r.stdout and len(list((tmp_path / "conv").glob("*.mid"))) == 6


def test_classification_from_a_generative_checkpoint(tmp_path, text_dir):
    gen = tmp_path / "gen"
    train.train(["--train_dir", str(text_dir), "--out_dir", str(gen), "--max_steps", "2", *TINY])
    clf = tmp_path / "clf"
    result = train.train(["--train_dir", str(text_dir), "--classify", "--init_from", str(gen / "ckpt.pt"),
                          "--out_dir", str(clf), "--max_steps", "3", *TINY])
    assert 0 <= result["accuracy"] <= 1
    ckpt = torch.load(clf / "ckpt.pt", weights_only=False)
    assert ckpt["data"]["classes"] == ["news", "poem"]
    gen_sd = torch.load(gen / "ckpt.pt", weights_only=False)["model"]
    assert gen_sd["patch_decoder.embed.weight"].shape == ckpt["model"]["patch_decoder.embed.weight"].shape
    r = run("sample.py", "--ckpt", str(clf / "ckpt.pt"), "--classify", str(text_dir))
    assert r.returncode == 0 and "accuracy" in r.stdout, r.stderr


def test_init_from_a_released_checkpoint(tmp_path, text_dir):
    path = tmp_path / "weights-text.pth"
    torch.save({"model": official_state_dict(C=128, P=16, N=16)}, path)
    result = train.train(["--train_dir", str(text_dir), "--init_from", str(path), "--out_dir", str(tmp_path / "o"),
                          "--max_steps", "1", "--batch_size", "2", "--eval_interval", "1"])
    assert result["content_bpb"] > 0
    r = run("sample.py", "--ckpt", f"official:{path}", "--ext", "txt", "--max_new_bytes", "20",
            "--out_dir", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    ref = BGPT.from_official(torch.load(path))
    assert ref.config.hidden_size == 128


def test_simulate_cpu_traces(tmp_path):
    import cpu
    cpu.write_cpu_dataset(tmp_path / "cpu", count=4, seed=0, test_count=2, memory_size=48, num_registers=10,
                          min_program=1, max_program=3, progress=False)
    out = tmp_path / "out"
    train.train(["--train_dir", str(tmp_path / "cpu" / "train"), "--eval_dir", str(tmp_path / "cpu" / "test"),
                 "--out_dir", str(out), "--max_steps", "2", *TINY])
    r = run("sample.py", "--ckpt", str(out / "ckpt.pt"), "--simulate", str(tmp_path / "cpu" / "test"),
            "--memory_size", "48", "--num_registers", "10")
    assert r.returncode == 0, r.stderr
    assert "byte accuracy" in r.stdout and "by opcode" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--train_dir", "/no/such/folder"], "does not exist"),
    (["--train_dir", "EMPTY"], "holds no files"),
    (["--no_such_flag", "1"], "unrecognized arguments"),
    (["--max_steps", "many"], "invalid int value"),
    (["--resume", "--out_dir", "EMPTY"], "no checkpoint"),
    (["--init_from", "/no/such.pth"], "no such file"),
    (["--init_from", "JUNK"], "not a readable checkpoint"),
    (["--train_dir", "TEXT", "--classify", "--init_from", "NOTCKPT"], "NOTCKPT"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, text_dir, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"x": torch.zeros(1)}}, bad)
    subs = {"EMPTY": str(tmp_path / "empty"), "JUNK": str(tmp_path / "junk.pth"), "TEXT": str(text_dir), "NOTCKPT": str(bad)}
    message = subs.get(message, message)
    r = run("train.py", *[subs.get(a, a) for a in args], "--out_dir", str(tmp_path / "o"), *TINY[:4])
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3  # usage + error for argparse, one line otherwise


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    train.save_checkpoint(path, step=1)

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        train.save_checkpoint(path, step=2)
    assert torch.load(path, weights_only=False)["step"] == 1
