"""The GPU path of train.py and data.py, checked on a CPU: collectives on the process's device,
the batch loader (worker processes, windowed reads, exact order), no mask and no logits a step
does not use, RNG states of the devices present, the paper preset, and .ci/gpu's flags."""

import ast
import os
import random
import re
import shlex
import subprocess

import pytest
import torch

import data
import devices
import train
from bgpt import BGPT, BGPTConfig
from conftest import ROOT, word_files

TINY = ["--hidden_size", "32", "--n_heads", "2", "--patch_layers", "1", "--byte_layers", "1",
        "--max_patches", "16", "--batch_size", "2", "--warmup_steps", "2", "--log_interval", "2",
        "--eval_interval", "100", "--eval_max_files", "4", "--dtype", "float32"]
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_object", "broadcast", "barrier", "reduce",
               "gather", "scatter", "all_to_all", "reduce_scatter", "broadcast_object_list"}
HELPERS = {"all_reduce", "all_gather", "barrier"}


@pytest.fixture
def words_dir(tmp_path):
    return word_files(tmp_path / "words", grow=25)


# ---------------------------------------------------------------------------------------------
# Collectives: on the device they are given (NCCL serves CUDA tensors only)


class Recorder:
    def __init__(self):
        self.devices = []

    def __call__(self, *args, **kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        tensors += [t for a in args if isinstance(a, list) for t in a]
        self.devices.append({t.device.type for t in tensors})
        self.kwargs = kwargs


def test_collectives_put_their_tensors_on_the_device_given(monkeypatch):
    meta = torch.device("meta")
    reduce, gather, barrier = Recorder(), Recorder(), Recorder()
    monkeypatch.setattr(devices.dist, "all_reduce", reduce)
    monkeypatch.setattr(devices.dist, "all_gather", gather)
    monkeypatch.setattr(devices.dist, "barrier", barrier)
    out = devices.all_reduce(torch.tensor([1.0]), 2, meta)
    devices.all_reduce(torch.tensor([1]), 2, meta, "max")
    assert out.device == meta and reduce.devices == [{"meta"}, {"meta"}]
    parts = devices.all_gather(torch.zeros(3, dtype=torch.uint8), 4, meta)
    assert len(parts) == 4 and gather.devices == [{"meta"}]
    devices.barrier(2, torch.device("cuda", 1))
    assert barrier.kwargs == {"device_ids": [1]}


def test_no_collective_outside_the_helpers():
    """train.py calls torch.distributed's collectives only through devices.py's helpers."""
    outside = []
    for name in ("train.py", "devices.py", "data.py"):
        tree = ast.parse(open(os.path.join(ROOT, name)).read())
        for fn in tree.body:
            for node in ast.walk(fn):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "dist"
                        and node.func.attr in COLLECTIVES
                        and (name != "devices.py" or getattr(fn, "name", "") not in HELPERS)):
                    outside.append(f"{name} {getattr(fn, 'name', '?')}: dist.{node.func.attr}")
    assert not outside


def test_evaluation_is_shared_between_processes(monkeypatch, words_dir):
    """Rank r scores every world-th file; the summed figures are those of one process."""
    cfg = train.TrainConfig(train_dir=str(words_dir), batch_size=2, dtype="float32")
    mcfg = BGPTConfig(max_patches=16, hidden_size=32, n_heads=2, patch_layers=1, byte_layers=1)
    _, held = data.load_data(cfg, mcfg, hold_out=True)
    held = data.ByteDataset(held.sources * 3, 16, 16)  # 6 files: 3 per rank
    torch.manual_seed(0)
    model = BGPT(mcfg)
    sums = []
    monkeypatch.setattr(devices.dist, "all_reduce", lambda t, op=None: sums.append(t.clone()))
    cpu = torch.device("cpu")
    for rank in (0, 1):
        train.evaluate(model, held, cpu, cfg, rank, 2)
    whole = train.evaluate(model, held, cpu, cfg)
    both = sums[0] + sums[1]
    keys = dict(zip(("correct", "n", "nll", "ids", "bits", "bytes"), both.tolist()))
    assert keys["nll"] / keys["ids"] == pytest.approx(whole["loss"], rel=1e-6)
    assert keys["bits"] / keys["bytes"] == pytest.approx(whole["content_bpb"], rel=1e-6)


def test_rng_states_of_the_devices_present_only():
    cpu = torch.device("cpu")
    state = devices.rng_state(cpu)
    assert state["cuda"].numel() == 0
    # A state saved on a GPU, or in the older format (a list for every visible GPU), restores
    # its CPU part on a CPU and asks nothing of CUDA.
    for cuda in (torch.zeros(16, dtype=torch.uint8), [torch.zeros(16, dtype=torch.uint8)] * 8):
        devices.set_rng_state({"torch": state["torch"], "cuda": cuda}, cpu)
    gathered = devices.gather_rng_states(1, cpu)
    assert torch.equal(gathered[0]["torch"], torch.get_rng_state())


# ---------------------------------------------------------------------------------------------
# The loader: the same batches as get_batch, from worker processes too; windows read, not files


def test_reading_the_window_equals_encoding_then_cropping(tmp_path):
    rng = random.Random(0)
    files = []
    for i in range(16):
        size = rng.choice([0, 1, 15, 16, 17, 255, 256, 1000, 3000])
        f = tmp_path / f"f{i}.{rng.choice(['txt', 'abc', 'mid'])}"
        f.write_bytes(bytes(rng.randrange(256) for _ in range(size)))
        files.append(f)
    sources = files + list(zip(files[::2], files[1::2]))
    for P, N in [(4, 3), (16, 2), (16, 8), (16, 64)]:
        for mode in ("head", "random"):
            ds = data.ByteDataset(sources, N, P, crop_mode=mode)
            for i, source in enumerate(sources):
                paths = source if isinstance(source, tuple) else (source,)
                ids = []
                for k, p in enumerate(paths):
                    encoded = data.encode(p.read_bytes(), data.file_ext(p), P)
                    ids += encoded if k == len(paths) - 1 else encoded[:-P]
                ds.rng.seed(i)
                assert ds.ids(i) == data.crop(ids, N, P, mode, random.Random(i)), (P, N, i)


def test_a_crop_reads_only_its_window(tmp_path, monkeypatch):
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: _Counting(real_open(*a, **k), reads))
    ds = data.ByteDataset([big], 16, 16, crop_mode="random", seed=3)
    ids = ds.ids(0)
    assert len(ids) == 16 * 16 and sum(reads) <= 15 * 16


class _Counting:
    def __init__(self, f, reads):
        self.f, self.reads = f, reads

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def seek(self, n):
        self.f.seek(n)

    def read(self, n=-1):
        out = self.f.read(n)
        self.reads.append(len(out))
        return out


@pytest.mark.filterwarnings("ignore:.pin_memory. argument")
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_loader_yields_get_batch_in_order_from_any_step(words_dir, device):
    """On a CPU in this process; for CUDA from worker processes (run here on the CPU): the same
    batches as get_batch, starting at any micro-step (a resume)."""
    cfg = train.TrainConfig(train_dir=str(words_dir), batch_size=3, max_steps=6, grad_accum=2,
                            seed=5)
    ds, _ = data.load_data(cfg, BGPTConfig(max_patches=8, hidden_size=32, n_heads=2))
    loader = data.batch_loader(ds, cfg, 4, rank=1, world=2, device=torch.device(device),
                               workers=2)
    got = list(loader)
    assert len(got) == 6 * 2 - 4
    for k, (x, mask, labels) in enumerate(got):
        want = data.get_batch(ds, cfg, 4 + k, 1, 2)
        assert torch.equal(x, want[0]) and torch.equal(mask, want[1])


# ---------------------------------------------------------------------------------------------
# The step: no mask when every patch is real, no logits it does not use


def test_the_step_passes_no_mask_for_full_batches_and_asks_for_no_logits(tmp_path, words_dir,
                                                                          monkeypatch):
    seen = []
    forward = BGPT.forward

    def recording(self, x, mask=None, **kwargs):
        if self.training:
            seen.append((mask is None, kwargs.get("return_logits", True)))
        return forward(self, x, mask, **kwargs)
    monkeypatch.setattr(BGPT, "forward", recording)
    # 128-byte context (8 patches x 16): every file here is longer, so no row has padding
    train.train(["--train_dir", str(words_dir), "--out_dir", str(tmp_path / "full"), *TINY,
                 "--max_patches", "8", "--max_steps", "2"])
    assert seen == [(True, False)] * 2
    seen.clear()
    train.train(["--train_dir", str(words_dir), "--out_dir", str(tmp_path / "padded"), *TINY,
                 "--max_patches", "64", "--max_steps", "2"])
    assert (False, False) in seen


def test_forward_without_logits_gives_the_same_loss():
    torch.manual_seed(0)
    model = BGPT(BGPTConfig(max_patches=4, hidden_size=32, n_heads=2, patch_layers=1,
                            byte_layers=1, dropout=0.0))
    x = torch.randint(0, 257, (3, 4 * 16))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    logits, loss = model(x, mask)
    none, same = model(x, mask, return_logits=False)
    assert none is None and torch.equal(loss, same) and logits.shape == (3, 3 * 16, 257)


# ---------------------------------------------------------------------------------------------
# The paper preset


def test_the_paper_preset_sets_the_paper_model_and_flags_win():
    cfg, model, given = train.parse_args(["--preset", "paper"])
    assert (model["hidden_size"], model["patch_layers"], model["byte_layers"], model["n_heads"],
            model["max_patches"], model["dropout"]) == (768, 12, 3, 12, 512, 0.1)
    assert (cfg.lr, cfg.batch_size, cfg.compile) == (1e-4, 16, True)
    cfg, model, _ = train.parse_args(["--preset", "paper", "--lr", "3e-4", "--max_patches", "64"])
    assert cfg.lr == 3e-4 and model["max_patches"] == 64 and model["hidden_size"] == 768
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--preset", "huge"])
    assert e.value.code == 2


# ---------------------------------------------------------------------------------------------
# .ci/gpu: a valid script whose train.py and bench.py flags parse


def ci_commands():
    text = open(os.path.join(ROOT, ".ci", "gpu")).read().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
        for script in ("train.py", "bench.py"):
            m = re.search(rf"(?:python|torchrun[^|;&]*?)\s+{script}\s+([^|;&]*)", line)
            if m:
                yield script, m.group(1)


def test_ci_gpu_is_valid_bash_and_its_flags_parse():
    r = subprocess.run(["bash", "-n", os.path.join(ROOT, ".ci", "gpu")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    import bench
    seen = set()
    for script, args in ci_commands():
        argv = [os.path.expandvars(a.replace('"', "")) for a in shlex.split(args, posix=False)]
        argv = [a for a in argv if a]
        (train.parse_args if script == "train.py" else bench.parse_args)(argv)
        seen.add(script)
    assert seen == {"train.py", "bench.py"}
