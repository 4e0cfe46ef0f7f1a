"""
Where a bGPT run (arXiv:2402.19155) computes: the device, the compute dtype (bf16 autocast or
fp32), torch.compile, and, for a run that torchrun starts on several devices (DDP), the processes
and the collectives between them, and each process's RNG states. train.py, sample.py and bench.py
share these.

    from devices import autocast, pick_device
    device = pick_device("auto")          # cuda, then mps, then cpu
    with autocast(device, "auto"):        # bf16 where the hardware multiplies it natively
        logits, loss = model(x)
"""

import functools
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist

from data import fail

# ---------------------------------------------------------------------------------------------
# Device, dtype and compilation


def pick_device(name="auto"):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else
                            "mps" if torch.backends.mps.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        fail(f"--device: {name!r} is not a device (auto, cpu, cuda, cuda:1, mps)")


@functools.cache  # read once: autocast() asks at every training step
def cpu_has_bf16():
    """Whether this CPU multiplies bf16 matrices natively (x86 AVX512-BF16 or AMX-BF16, as Linux
    lists them). Elsewhere torch emulates bf16 on a CPU, slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:  # not Linux
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


DTYPES = ("auto", "float32", "bfloat16")  # --dtype's choices


def uses_bf16(device, dtype="auto"):
    """Whether a step computes in bf16: as --dtype says, or for "auto" on CUDA and on CPUs with
    native bf16 (other devices would emulate it, slower than fp32)."""
    if dtype == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
    return dtype == "bfloat16"


def autocast(device, dtype="auto"):
    """bf16 autocast when uses_bf16 says so: matmuls in bf16, weights and optimizer state stay
    fp32. A plain fp32 context otherwise."""
    bf16 = uses_bf16(device, dtype)
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def compile_decoders(model):
    """torch.compile the model's transformers in place (parameter names stay as they are). Not
    the whole model: which rows go to the byte decoder has a data-dependent count, a graph that
    torch 2.13 fails to compile, so that choice stays eager between the two compiled parts."""
    for decoder in (model.patch_decoder, getattr(model, "byte_decoder", None)):
        if decoder is not None:
            decoder.compile()


# ---------------------------------------------------------------------------------------------
# Distributed training. `torchrun` starts one process per device and sets RANK, LOCAL_RANK and
# WORLD_SIZE; without them (plain `python train.py`) there is one process and nothing changes.


def setup_distributed(device_name):
    """Returns (rank, world size, device). Gloo on CPUs, NCCL between GPUs. No rank waits long
    for another in a collective (evaluation is shared, rank 0 alone only writes checkpoints), so
    the process group's default timeout (10 minutes) holds."""
    if "RANK" not in os.environ:
        return 0, 1, pick_device(device_name)
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per process
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


# train.py's collectives all go through the three functions below, which move their tensors to
# the process's device first: NCCL serves CUDA tensors only and gloo CPU ones, so a tensor built
# on the CPU and reduced between GPUs would fail at the first step.


def all_reduce(t, world, device, op="sum"):
    """t summed (or op="max": the largest) over all processes, as a tensor on device."""
    t = t.to(device)
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


def all_gather(t, world, device):
    """[t of process 0, t of process 1, ...] (t of one shape on all), tensors on device."""
    t = t.to(device)
    if world == 1:
        return [t]
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return out


def barrier(world, device):
    """Wait until every process gets here (NCCL's barrier runs on this process's GPU)."""
    if world > 1:
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def any_rank(flag, world, device):
    """True on every process if it is true on one (e.g. one of them received Ctrl-C)."""
    return flag if world == 1 else bool(all_reduce(torch.tensor(int(flag)), world, device, "max"))


# ---------------------------------------------------------------------------------------------
# RNG states, saved in every checkpoint for an exact resume


def rng_state(device):
    """This process's RNG states: the CPU's and, on a GPU, that GPU's alone (not every visible
    GPU's: a resumed run may see fewer)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0)
    return {"torch": torch.get_rng_state(), "cuda": cuda.to(torch.uint8)}


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")  # (a list in older checkpoints, empty on CPUs: nothing to restore)
    if device.type == "cuda" and isinstance(cuda, torch.Tensor) and cuda.numel():
        torch.cuda.set_rng_state(cuda, device)


def gather_rng_states(world, device):
    """Every process's RNG states (dropout differs per process), for an exact resume under DDP:
    each process's as one byte tensor, gathered, then cut apart again."""
    mine = rng_state(device)
    n = mine["torch"].numel()
    flat = all_gather(torch.cat([mine["torch"], mine["cuda"]]), world, device)
    return [{"torch": t[:n].cpu(), "cuda": t[n:].cpu()} for t in flat]
