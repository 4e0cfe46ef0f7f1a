"""train.py end to end on tiny models: the command line, the three modes, checkpoints from
--init_from, gradient accumulation, exact resume."""

import io
import json

import pytest
import torch

import data
import devices
import train
from bgpt import BGPT, convert_official
from conftest import TINY, load, losses, official_state_dict, run


@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    for i in range(12):
        body = b"the cat sat on the mat. " if i % 2 else b"0123456789, "
        (d / f"{['news', 'poem'][i % 2]}_{i}.txt").write_bytes(body * (i + 2))
    return d


@pytest.fixture
def long_dir(tmp_path):
    """Files longer than the 16-patch context: every sequence has exactly 16 real patches, so a
    batch's mean loss is the mean of its halves' means."""
    d = tmp_path / "long"
    d.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(24):
        words = torch.randint(0, 6, (200,), generator=g).tolist()
        text = " ".join(["cat", "mat", "sat", "the", "on", "a"][w] for w in words)
        (d / f"f{i:02d}.txt").write_text(text)
    return d


def test_train_then_sample_from_the_command_line(tmp_path, text_dir):
    out = tmp_path / "out"
    r = run("train.py", "--train_dir", str(text_dir), "--out_dir", str(out), "--max_steps", "4",
            *TINY)
    assert r.returncode == 0, r.stderr
    assert "bytes/s" in r.stdout and "best learned" in r.stdout and (out / "ckpt.pt").exists()
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    assert {"loss", "bpb", "lr", "ms_per_step", "bytes_per_s"} <= set(records[0])
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert any("eval" in r and "content_bpb" in r["eval"] for r in records)
    assert any("baselines" in r for r in records)
    r = run("sample.py", "--ckpt", str(out / "ckpt.pt"), "--out_dir", str(tmp_path / "s"),
            "--max_new_bytes", "40")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "s").glob("sample_*.txt"))) == 3


def test_resume_is_exact(tmp_path, text_dir):
    """2n steps in one go == n steps, then a resumed run for n more: the same weights."""
    common = ["--train_dir", str(text_dir), *TINY, "--dropout", "0.1", "--lr_decay_steps", "6"]
    train.train([*common, "--out_dir", str(tmp_path / "a"), "--max_steps", "6"])
    train.train([*common, "--out_dir", str(tmp_path / "b"), "--max_steps", "3"])
    train.train(["--resume", "--out_dir", str(tmp_path / "b"), "--max_steps", "6"])
    a, b = load(tmp_path / "a" / "ckpt.pt"), load(tmp_path / "b" / "ckpt.pt")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    a_log, b_log = (dict(losses(tmp_path / d, by_step=True)) for d in "ab")
    assert a_log == {k: b_log[k] for k in a_log}  # the resumed log goes on where it stopped


def test_a_finished_run_scores_on_another_folder(tmp_path, text_dir, long_dir):
    """--resume at max_steps trains nothing: it evaluates the checkpoint on the --eval_dir given
    now, beside the baselines on those bytes, and leaves the checkpoint as it was."""
    out = tmp_path / "out"
    first = train.train(["--train_dir", str(text_dir), "--out_dir", str(out), "--max_steps", "3",
                         *TINY])
    before = (out / "ckpt.pt").read_bytes()
    other = train.train(["--resume", "--out_dir", str(out), "--eval_dir", str(long_dir)])
    assert (out / "ckpt.pt").read_bytes() == before
    assert other["content_bpb"] != first["content_bpb"] and "ppmd_bpb" in other
    again = train.train(["--resume", "--out_dir", str(out), "--eval_dir", str(long_dir)])
    assert again["content_bpb"] == other["content_bpb"]


def test_grad_accum_equals_one_big_batch(tmp_path, long_dir):
    """2 micro-batches of 4 give the gradients of one batch of 8: the same losses step by step."""
    common = ["--train_dir", str(long_dir), *TINY, "--max_steps", "4", "--log_interval", "1",
              "--eval_interval", "100"]
    train.train([*common, "--out_dir", str(tmp_path / "big"), "--batch_size", "8"])
    train.train([*common, "--out_dir", str(tmp_path / "acc"), "--batch_size", "4",
                 "--grad_accum", "2"])
    big, acc = losses(tmp_path / "big"), losses(tmp_path / "acc")
    assert len(big) == 4 and big[0] != big[-1]  # it trains
    assert acc == pytest.approx(big, rel=1e-5)
    half = train.TrainConfig(batch_size=4)  # the micro-batches are the big batch's halves:
    ds, _ = train.load_data(train.TrainConfig(train_dir=str(long_dir)), train.BGPTConfig(
        max_patches=16, hidden_size=32, n_heads=2))
    x8 = data.get_batch(ds, train.TrainConfig(batch_size=8), 1)[0]
    x4 = torch.cat([data.get_batch(ds, half, 2)[0], data.get_batch(ds, half, 3)[0]])
    assert torch.equal(x8, x4)


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
    assert lrs[60] == pytest.approx(0.55, abs=0.01)  # half-way down the cosine
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # matrices only


def test_loss_skip_bytes_leaves_the_prefix_out(tmp_path, long_dir):
    """The skipped patches are out of the training mask and of the held-out loss."""
    cfg = train.TrainConfig(train_dir=str(long_dir), batch_size=2, loss_skip_bytes=64)
    ds, held = train.load_data(cfg, train.BGPTConfig(max_patches=16, hidden_size=32, n_heads=2))
    _, mask, _ = data.get_batch(ds, cfg, 0)
    assert mask[:, 1:5].sum() == 0 and mask[:, 0].all() and mask[:, 5:].all()
    model = BGPT(train.BGPTConfig(max_patches=16, hidden_size=32, n_heads=2, patch_layers=1,
                                  byte_layers=1))
    skip = train.evaluate(model, held, torch.device("cpu"), cfg)
    full = train.evaluate(model, held, torch.device("cpu"), train.TrainConfig(batch_size=2))
    assert "content_bpb" not in skip and skip["loss"] != pytest.approx(full["loss"])


def test_conversion_mode(tmp_path):
    d = tmp_path / "music"
    d.mkdir()
    for i in range(6):
        (d / f"tune{i}.abc").write_bytes(b"X:%d\nK:G\nGAB" % i)
        (d / f"tune{i}.mid").write_bytes(b"MThd%d" % i)
    out = tmp_path / "out"
    train.train(["--train_dir", str(d), "--convert", "abc->mid", "--out_dir", str(out),
                 "--max_steps", "3", *TINY])
    r = run("sample.py", "--ckpt", str(out / "ckpt.pt"), "--convert", str(d), "--to", "mid",
            "--out_dir", str(tmp_path / "conv"), "--max_new_bytes", "32", "--top_k", "1")
    assert r.returncode == 0, r.stderr
    assert "byte-identical" in r.stdout and len(list((tmp_path / "conv").glob("*.mid"))) == 6


def test_classification_learns_a_separable_toy_set(tmp_path):
    """Files of 'a's against files of 'b's: far above the 50% of chance on held-out files,
    starting from a generative checkpoint whose patch decoder it takes over."""
    d = tmp_path / "ab"
    for split in ("train", "test"):
        (d / split).mkdir(parents=True)
        for i in range(8):
            for label, byte in (("a", b"a"), ("b", b"b")):
                (d / split / f"{label}_{i}.txt").write_bytes(byte * (20 + 7 * i))
    gen = tmp_path / "gen"
    train.train(["--train_dir", str(d / "train"), "--out_dir", str(gen), "--max_steps", "2",
                 *TINY])
    clf = tmp_path / "clf"
    result = train.train(["--train_dir", str(d / "train"), "--eval_dir", str(d / "test"),
                          "--classify", "--init_from", str(gen / "ckpt.pt"), "--out_dir",
                          str(clf), "--max_steps", "30", "--lr", "3e-3", *TINY])
    assert result["accuracy"] == 1.0
    ckpt = load(clf / "ckpt.pt")
    assert ckpt["data"]["classes"] == ["a", "b"]
    # Its log holds the label loss; bits per byte belong to byte models only.
    records = [json.loads(line) for line in open(clf / "log.jsonl")]
    assert any("loss" in r for r in records) and not any("bpb" in r for r in records)
    gen_sd = load(gen / "ckpt.pt")["model"]
    assert not torch.equal(gen_sd["patch_decoder.embed.weight"],
                           ckpt["model"]["patch_decoder.embed.weight"])  # it was trained on
    r = run("sample.py", "--ckpt", str(clf / "ckpt.pt"), "--classify", str(d / "test"))
    assert r.returncode == 0, r.stderr
    assert "accuracy 1.0000" in r.stdout


def test_init_from_a_released_checkpoint(tmp_path, text_dir):
    """The run starts from the released weights, converted; it trains and samples."""
    path = tmp_path / "weights-text.pth"
    released = official_state_dict(C=128, P=16, N=16)
    torch.save({"model": released}, path)
    args = ["--train_dir", str(text_dir), "--init_from", str(path), "--out_dir",
            str(tmp_path / "o"), "--batch_size", "2"]
    setup = train.setup(args)
    assert setup.mcfg.hidden_size == 128 and setup.mcfg.max_patches == 16
    expected = convert_official(released, setup.mcfg)
    assert setup.model.state_dict().keys() == expected.keys()
    for k, v in setup.model.state_dict().items():
        assert torch.equal(v, expected[k]), k
    result = train.train([*args, "--max_steps", "1"])
    assert result["content_bpb"] > 0
    r = run("sample.py", "--ckpt", f"official:{path}", "--ext", "txt",
            "--max_new_bytes", "20", "--out_dir", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr


def test_init_from_a_patch_size_4_checkpoint(tmp_path, long_dir):
    """The data is encoded with the checkpoint's patch size, not the command line's default."""
    first = tmp_path / "p4"
    train.train(["--train_dir", str(long_dir), "--out_dir", str(first), "--max_steps", "2",
                 *TINY, "--patch_size", "4", "--max_patches", "40"])
    out = tmp_path / "again"
    result = train.train(["--train_dir", str(long_dir), "--init_from", str(first / "ckpt.pt"),
                          "--out_dir", str(out), "--max_steps", "2", "--batch_size", "2"])
    assert result["content_bpb"] > 0
    config = load(out / "ckpt.pt")["config"]["model"]
    assert config["patch_size"] == 4 and config["max_patches"] == 40


@pytest.mark.parametrize("native_bf16", [False, True])
def test_autocast_bf16_where_the_cpu_has_it(monkeypatch, request, native_bf16):
    """devices.autocast computes in bf16 on a CPU that lists avx512_bf16 or amx_bf16, in fp32 on
    one that does not; the bf16 loss tracks the fp32 one to bf16 precision."""
    flags = "fpu sse2 avx2" + (" avx512f avx512_bf16" if native_bf16 else "")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: io.StringIO(f"flags\t: {flags}\n")
                        if path == "/proc/cpuinfo" else real_open(path, *a, **k))
    devices.cpu_has_bf16.cache_clear()  # the answer is cached: read the mocked file, then forget it
    request.addfinalizer(devices.cpu_has_bf16.cache_clear)
    assert devices.cpu_has_bf16() is native_bf16
    torch.manual_seed(0)
    model = BGPT(train.BGPTConfig(max_patches=8, hidden_size=64, n_heads=2, patch_layers=2,
                                  byte_layers=1, dropout=0.0))
    x = torch.randint(0, 257, (2, 8 * 16))
    _, fp32 = model(x)
    with devices.autocast(torch.device("cpu")):
        logits, loss = model(x)
    assert logits.dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(fp32.item(), rel=2e-2 if native_bf16 else 1e-6)


@pytest.mark.slow
def test_compile_on_cpu_gives_the_eager_losses(tmp_path, long_dir):
    """--compile (the GPU default for speed) runs the same computation: checked on a CPU, each
    run in its own process, as a user starts it."""
    pytest.importorskip("torch._inductor")
    common = ["--train_dir", str(long_dir), *TINY, "--max_steps", "3", "--log_interval", "1",
              "--eval_interval", "100"]
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        r = run("train.py", *common, "--out_dir", str(tmp_path / name), *flags)
        assert r.returncode == 0, r.stderr[-2000:]
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)
    # Compiling in place leaves the parameter names alone: the checkpoints hold the same keys.
    keys = [set(torch.load(tmp_path / name / "ckpt.pt", weights_only=True)["model"])
            for name in ("eager", "compiled")]
    assert keys[0] == keys[1] and not any("_orig_mod" in k for k in keys[1])
