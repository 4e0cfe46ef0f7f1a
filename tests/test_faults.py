"""Never lose a run: DDP under torchrun, kills at random moments, Ctrl-C, a mistyped --out_dir,
a non-finite loss, a full disk, checkpoints that carry code, and a sweep of bad input."""

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys

import pytest
import torch

import train
from conftest import ROOT, TINY, load, losses, official_state_dict, run


def digest(folder):
    """(name, sha1) of every file in folder: to check that nothing was touched."""
    return {p: hashlib.sha1(open(os.path.join(folder, p), "rb").read()).hexdigest()
            for p in sorted(os.listdir(folder))}


@pytest.fixture
def long_dir(tmp_path):
    d = tmp_path / "long"
    d.mkdir()
    rng = random.Random(0)
    for i in range(24):
        (d / f"f{i:02d}.txt").write_text(" ".join(rng.choice(["cat", "sat", "on", "a", "mat"])
                                                  for _ in range(200)))
    return d


@pytest.mark.slow
def test_ddp_two_processes_equal_one_with_the_whole_batch(tmp_path, long_dir):
    """torchrun with 2 CPU processes (gloo) and --batch_size 4 takes the steps one process takes
    with --batch_size 8; only rank 0 writes the checkpoint and the log."""
    # fp32: under bf16 autocast the sums over 2 x 4 and 1 x 8 rows round differently.
    common = ["--train_dir", str(long_dir), *TINY, "--max_steps", "4", "--log_interval", "1",
              "--eval_interval", "100", "--dropout", "0.0", "--dtype", "float32"]
    one = run("train.py", *common, "--batch_size", "8", "--out_dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", os.path.join(ROOT, "train.py"), *common,
                          "--batch_size", "4", "--out_dir", str(tmp_path / "two")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert two.returncode == 0, two.stderr
    assert "x 2 processes" in two.stdout and two.stdout.count("step     4 | loss") == 1
    assert sorted(os.listdir(tmp_path / "two")) == ["ckpt.pt", "log.jsonl"]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    a, b = load(tmp_path / "one" / "ckpt.pt"), load(tmp_path / "two" / "ckpt.pt")
    assert len(b["rng"]) == 2  # every rank's RNG state, for an exact resume
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5), k


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_exact(tmp_path, long_dir):
    """Kill training with SIGKILL a dozen times, half of them while a checkpoint is being
    written, resuming after each: the newest checkpoint always loads, its step never goes back,
    a half-written file is never taken for one, and the final weights are those of a run that
    was never interrupted, bit for bit.

    Every kill is keyed on the run's own progress, never on the clock: the even ones when the
    run logs a step a few steps past its last checkpoint (a random place in a step), the odd
    ones the moment the temporary checkpoint file appears (inside a write). So the sweep does
    the same on a slow machine and a fast one."""
    common = ["--train_dir", str(long_dir), *TINY, "--max_steps", "120", "--save_interval", "1",
              "--eval_interval", "1000", "--log_interval", "1", "--dropout", "0.1"]
    whole = run("train.py", *common, "--out_dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    ckpt, tmp = out / "ckpt.pt", out / "ckpt.pt.tmp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    rng = random.Random(0)
    kills, in_write, last_step = 0, 0, 0
    while True:
        resume = ["--resume"] if ckpt.exists() else ["--overwrite"]
        in_a_write, on_a_step = kills < 12 and kills % 2 == 1, kills < 12 and kills % 2 == 0
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *common,
                              "--out_dir", str(out), *resume], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE if on_a_step else subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        if in_a_write:  # the moment the temporary file appears
            while not tmp.exists() and p.poll() is None:
                pass
            in_write += tmp.exists()
        elif on_a_step:  # when the log shows the run a few steps past its checkpoint
            target = min(last_step + rng.randint(1, 6), 119)
            for line in p.stdout:
                if line.startswith("step") and int(line.split()[1]) >= target:
                    break
        if kills < 12 and p.poll() is None:
            p.kill()
            kills += 1
        if p.stdout:
            p.stdout.close()
        p.wait()
        if ckpt.exists():
            state = load(ckpt)  # always a whole checkpoint
            assert state["step"] >= last_step
            last_step = state["step"]
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, p.returncode
    assert kills == 12 and in_write >= 3
    a, b = load(tmp_path / "whole" / "ckpt.pt"), load(ckpt)
    assert a["step"] == b["step"] == 120
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.slow
def test_ctrl_c_finishes_the_step_saves_and_says_how_to_resume(tmp_path, long_dir):
    out = tmp_path / "out"
    args = ["--train_dir", str(long_dir), *TINY, "--max_steps", "100000", "--log_interval", "1",
            "--save_interval", "100000", "--eval_interval", "100000", "--out_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:  # wait until it trains
        if line.startswith("step     3"):
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGINT and "Traceback" not in err
    assert f"python train.py --resume --out_dir {out}" in err
    step = load(out / "ckpt.pt")["step"]
    assert step >= 3
    r = run("train.py", "--resume", "--out_dir", str(out), "--max_steps", str(step + 2))
    assert r.returncode == 0, r.stderr
    assert load(out / "ckpt.pt")["step"] == step + 2


@pytest.mark.slow
def test_a_new_run_never_replaces_an_old_one(tmp_path, long_dir):
    out = tmp_path / "out"
    args = ["--train_dir", str(long_dir), *TINY, "--max_steps", "2", "--out_dir", str(out)]
    assert run("train.py", *args).returncode == 0
    before = digest(out)
    r = run("train.py", *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--resume" in r.stderr and "--overwrite" in r.stderr
    assert digest(out) == before
    r = run("train.py", *args, "--overwrite", "--seed", "1")
    assert r.returncode == 0 and digest(out) != before


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, long_dir,
                                                                      monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["--train_dir", str(long_dir), *TINY, "--out_dir", str(out), "--save_interval", "2"]
    train.train([*args, "--max_steps", "2"])
    before = digest(out)
    forward = train.BGPT.forward
    calls = []

    def nan_at_the_third_training_step(self, x, mask=None, **kwargs):
        logits, loss = forward(self, x, mask, **kwargs)
        calls.extend([1] if self.training else [])
        return logits, loss * float("nan") if len(calls) == 3 else loss
    monkeypatch.setattr(train.BGPT, "forward", nan_at_the_third_training_step)
    with pytest.raises(SystemExit) as e:
        train.train(["--resume", "--out_dir", str(out), "--max_steps", "10"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nan at step 5" in err and len(err.strip().splitlines()) == 1
    state = load(out / "ckpt.pt")  # step 4's, saved at the interval; step 5 never saved
    assert state["step"] == 4 and digest(out)["ckpt.pt"] != before["ckpt.pt"]
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    path = str(tmp_path / "ckpt.pt")
    train.save_checkpoint(path, step=1)

    def full_disk(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as e:
        train.save_checkpoint(path, step=2)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert load(path)["step"] == 1 and os.listdir(tmp_path) == ["ckpt.pt"]


class WritesAFile:
    """An object whose unpickling opens (creates) a file: any code could run there instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.slow
def test_checkpoints_that_carry_code_are_refused(tmp_path, long_dir):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil" / "ckpt.pt"
    evil.parent.mkdir()
    torch.save({"model": {"w": torch.zeros(1)}, "config": {}, "optimizer": WritesAFile(
        str(marker))}, evil)
    for script, args in [
            ("train.py", ["--train_dir", str(long_dir), "--init_from", str(evil), "--out_dir",
                          str(tmp_path / "o")]),
            ("train.py", ["--resume", "--out_dir", str(evil.parent)]),
            ("sample.py", ["--ckpt", str(evil), "--out_dir", str(tmp_path / "s")]),
            ("sample.py", ["--ckpt", f"official:{evil}", "--out_dir", str(tmp_path / "s")])]:
        r = run(script, *args)
        assert r.returncode == 2, (script, args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "not a readable checkpoint" in r.stderr
        assert not marker.exists()
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------
# The bad-input sweep: every case answers with one line naming the file or option, exit 2.


def make_inputs(tmp):
    """Folders and files for the sweep; returns a dict of names to paths."""
    p = {}
    for name in ("empty", "zero", "long", "loop", "badname", "pairs", "oneclass", "unreadable"):
        (tmp / name).mkdir()
        p[name] = str(tmp / name)
    for i in range(4):
        (tmp / "zero" / f"z{i}.txt").write_bytes(b"")
        (tmp / "long" / f"l{i}.txt").write_bytes(os.urandom(50_000))
        (tmp / "pairs" / f"t{i}.abc").write_bytes(b"X:1\nK:G\nGAB")
        (tmp / "oneclass" / f"cat_{i}.txt").write_bytes(b"meow " * 10)
        (tmp / "unreadable" / f"u{i}.txt").write_bytes(b"secret")
    os.symlink("b", tmp / "loop" / "a")
    os.symlink("a", tmp / "loop" / "b")
    (tmp / "loop" / "ok.txt").write_bytes(b"fine")
    for i in range(4):
        (tmp / "badname").joinpath(os.fsdecode(b"f%d.t\xffxt" % i)).write_bytes(b"abc" * 50)
    (tmp / "junk.pt").write_bytes(b"not a checkpoint")
    p["junk"] = str(tmp / "junk.pt")
    return p


@pytest.mark.slow
def test_inputs_that_are_valid(tmp_path):
    """0-byte files, files far longer than the context and names that are not UTF-8 train."""
    p = make_inputs(tmp_path)
    for folder in ("zero", "long", "badname"):
        r = run("train.py", "--train_dir", p[folder], "--out_dir", str(tmp_path / f"o_{folder}"),
                *TINY, "--max_steps", "2")
        assert r.returncode == 0, (folder, r.stderr)


@pytest.mark.slow
def test_bad_input_sweep(tmp_path):
    p = make_inputs(tmp_path)
    ours = tmp_path / "ours"
    assert run("train.py", "--train_dir", p["long"], "--out_dir", str(ours), *TINY,
               "--max_steps", "1").returncode == 0
    ckpt = str(ours / "ckpt.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(ckpt, "rb").read()[:1000])
    released = tmp_path / "weights-text.pth"
    torch.save({"model": official_state_dict(C=32, P=16, N=16)}, released)
    os.chmod(tmp_path / "unreadable" / "u0.txt", 0)
    out = str(tmp_path / "o")
    t = ["--out_dir", out, *TINY]  # first: a flag given again later wins
    cases = [  # (script, arguments, what the one line must name)
        ("train.py", ["--train_dir", "/no/such/folder", *t], "/no/such/folder"),
        ("train.py", ["--train_dir", p["empty"], *t], p["empty"]),
        ("train.py", ["--train_dir", p["loop"], *t], "loop"),
        ("train.py", ["--train_dir", p["pairs"], "--convert", "abc->mid", *t], "abc->mid"),
        ("train.py", ["--train_dir", p["oneclass"], "--classify", *t], "2 labels"),
        ("train.py", ["--train_dir", p["long"], "--init_from", str(truncated), *t], "truncated"),
        ("train.py", ["--train_dir", p["long"], "--init_from", p["junk"], *t], p["junk"]),
        ("train.py", ["--train_dir", p["long"], *t, "--init_from", ckpt, "--hidden_size", "64"],
         "--hidden_size"),
        ("train.py", ["--resume", "--out_dir", str(ours), "--hidden_size", "64"],
         "--hidden_size"),
        ("train.py", ["--resume", "--out_dir", str(tmp_path / "nothing")], "no checkpoint"),
        ("train.py", ["--train_dir", p["long"], "--out_dir", str(released), *TINY[2:]],
         "is a file"),
        ("train.py", [*t, "--batch_size", "0"], "--batch_size"),
        ("train.py", [*t, "--max_steps", "-1"], "--max_steps"),
        ("train.py", [*t, "--grad_accum", "0"], "--grad_accum"),
        ("train.py", [*t, "--save_interval", "0"], "--save_interval"),
        ("train.py", [*t, "--lr", "-1"], "--lr"),
        ("train.py", [*t, "--hidden_size", "0"], "hidden_size"),
        ("train.py", ["--train_dir", p["long"], *t, "--patch_size", "-4"], "patch_size"),
        ("sample.py", ["--ckpt", str(released)], "official:"),
        ("sample.py", ["--ckpt", f"official:{ckpt}"], "official:"),
        ("sample.py", ["--ckpt", str(truncated)], "truncated"),
        ("sample.py", ["--ckpt", p["junk"]], p["junk"]),
        ("sample.py", ["--ckpt", "/no/such.pt"], "/no/such.pt"),
        ("sample.py", ["--ckpt", ckpt, "--temperature", "-1"], "--temperature"),
        ("sample.py", ["--ckpt", ckpt, "--top_p", "0"], "--top_p"),
        ("sample.py", ["--ckpt", ckpt, "--top_p", "1.5"], "--top_p"),
        ("sample.py", ["--ckpt", ckpt, "--top_k", "0"], "--top_k"),
        ("sample.py", ["--ckpt", ckpt, "--num_samples", "0"], "--num_samples"),
        ("sample.py", ["--ckpt", ckpt, "--max_new_bytes", "-5"], "--max_new_bytes"),
        ("sample.py", ["--ckpt", ckpt, "--convert", p["empty"], "--to", "mid"], p["empty"]),
        ("sample.py", ["--ckpt", ckpt, "--classify", p["long"]], "--classify"),
        ("data.py", ["cpu", "--out", str(tmp_path / "cpu"), "--count", "0"], "--count"),
        ("data.py", ["cpu", "--out", str(tmp_path / "cpu"), "--count", "2", "--memory_size",
                     "-8"], "memory_size"),
        ("data.py", ["cpu", "--out", p["junk"], "--count", "2"], p["junk"]),
    ]
    if os.getuid() != 0:  # root reads a file whatever its mode says
        cases.append(("train.py", ["--train_dir", p["unreadable"], *t], "u0.txt"))
    before = digest(ours)
    for script, args, named in cases:
        r = run(script, *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (script, args, r.stderr)
        assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith("usage:")), \
            (script, args, r.stderr)
        assert named in lines[-1], (script, args, r.stderr)
    assert digest(ours) == before and not os.path.exists(out)
