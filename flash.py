"""
FlashAttention written here: causal attention that never holds the (L, S) score matrix in memory,
first as the tiled algorithm in plain PyTorch, then as Triton kernels, forward and backward, in
the FlashAttention-2 scheme (Dao, arXiv:2307.08691, Algorithms 1 and 2; the tiling and the online
softmax are FlashAttention's, Dao et al., arXiv:2205.14135). bgpt.py uses it for
attention="flash" and imports this file only then: Triton is needed on that path alone.

    python train.py --attention flash                        # on a CUDA GPU
    TRITON_INTERPRET=1 python -m pytest -q tests/test_flash.py   # on a CPU, through the interpreter

Notation as in the paper: Q, K, V, O are (L, d) or (S, d) per (batch, head); a query block Q_i is
Br rows, a key block K_j, V_j is Bc rows; S_ij = Q_i K_j^T is a (Br, Bc) tile of scores; m_i and
l_i are the running maximum and running sum of each row; LSE_i = m_i + log l_i is the row's
log-sum-exp, the one number per row the backward pass needs to rebuild P_ij = exp(S_ij - LSE_i).
The queries are the last L of S positions (a KV cache holds the first S - L), so query row r sits
at position S - L + r and sees keys 0 .. S - L + r: the causal diagonal is offset by S - L.
"""

import math

import torch
import triton
import triton.language as tl

# (Br, Bc, warps) of each kernel on a GPU, by head size (16 and 32 as 64): the largest tiles
# tried that compile for an H100 (sm_90) with no register spills, bf16, with dropout and without
# (cuobjdump -res-usage; tests/test_flash.py compiles them). Not yet timed on a GPU. A call takes
# smaller tiles when L or S is short: the byte decoder's 16 positions are one 16 x 16 tile.
TILES = {"forward": {64: (128, 64, 8), 128: (128, 64, 8)},
         "dkdv": {64: (32, 64, 4), 128: (32, 32, 4)},
         "dq": {64: (64, 64, 8), 128: (64, 32, 4)}}
GRID_Y_MAX = 65_535  # CUDA's limit on grid axes 1 and 2; axis 0 allows 2^31 - 1 programs
GRID_X_MAX = 2 ** 31 - 1

# ---------------------------------------------------------------------------------------------
# 1. The algorithm in plain PyTorch: what the kernels are tested against and the notebook teaches


def attention_manual(q, k, v, dropout_p=0.0, keep=None):
    """Causal attention written out, the whole (L, S) matrix at once. q: (B, H, L, D), k, v:
    (B, H, S, D). keep: a (B, H, L, S) bool dropout mask (dropout_keep gives the kernel's)."""
    L, S = q.size(-2), k.size(-2)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, L, S)
    visible = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(diagonal=S - L)
    att = att.masked_fill(~visible, float("-inf")).softmax(dim=-1)
    if keep is not None:
        att = att * keep / (1 - dropout_p)  # the kept weights, scaled so their mean stays
    return att @ v  # (B, H, L, S) @ (B, H, S, D) -> (B, H, L, D)


def attention_tiled(q, k, v, Br=16, Bc=16):
    """The same result one (Br, Bc) tile at a time, as the forward kernel computes it: for each
    query block, walk the key blocks it can see, keep each row's running maximum m and running
    sum l of exp(score - m), and rescale the accumulator whenever m moves. Returns O (B, H, L, D)
    and the log-sum-exp of every row (B, H, L). Nothing of size (L, S) is built."""
    L, S, D = q.size(-2), k.size(-2), q.size(-1)
    O, LSE = torch.empty_like(q), q.new_empty(q.shape[:-1])
    for i in range(0, L, Br):  # one query block Q_i: rows i .. i+Br-1
        Q_i = q[..., i:i + Br, :]  # (B, H, Br, D)
        rows = torch.arange(i, min(i + Br, L), device=q.device) + S - L  # their positions
        m = q.new_full(Q_i.shape[:-1], float("-inf"))  # (B, H, Br): the running maximum
        l = q.new_zeros(Q_i.shape[:-1])  # the running sum of exp(s - m)
        acc = torch.zeros_like(Q_i)  # sum of exp(s - m) v, divided by l at the end
        for j in range(0, int(rows[-1]) + 1, Bc):  # key blocks up to the last row's position
            S_ij = Q_i @ k[..., j:j + Bc, :].transpose(-2, -1) / math.sqrt(D)  # (B, H, Br, Bc)
            cols = torch.arange(j, min(j + Bc, S), device=q.device)
            S_ij = S_ij.masked_fill(cols[None, :] > rows[:, None], float("-inf"))  # the diagonal
            m_new = torch.maximum(m, S_ij.amax(-1))
            P_ij = torch.exp(S_ij - m_new[..., None])  # (B, H, Br, Bc), each entry in (0, 1]
            alpha = torch.exp(m - m_new)  # how much the old terms shrink: 1 if m did not move
            l = alpha * l + P_ij.sum(-1)
            acc = alpha[..., None] * acc + P_ij @ v[..., j:j + Bc, :]  # (B, H, Br, D)
            m = m_new
        O[..., i:i + Br, :] = acc / l[..., None]
        LSE[..., i:i + Br] = m + torch.log(l)
    return O, LSE


def visited_blocks(L, S, Br, Bc):
    """How many key blocks each query block visits: those up to its last row's position. The
    forward kernel loops over exactly these (tests check its own count against this). At the
    paper's 512 patches with the forward's 128 x 64 tiles: 20 of 32 tiles, so 37.5% of the
    forward's tile FLOPs skipped (sum(visited_blocks(512, 512, 128, 64)); notebook 07 section 3)."""
    return [-(-(min(i + Br, L) + S - L) // Bc) for i in range(0, L, Br)]


# ---------------------------------------------------------------------------------------------
# 2. The kernels. One program handles one block of one (batch, head); batch x head is grid axis
# 0, the one CUDA allows 2^31 - 1 programs on (the byte decoder alone has 16 x 511 rows x 12 heads
# = 98,112 at the paper's batch 16; axes 1 and 2 stop at 65,535). Tiles are fp32 inside: scores,
# running statistics and accumulators; only the inputs of tl.dot are in the input dtype.


@triton.jit
def _tile(ptr, idx, n, stride, d: tl.constexpr):
    """Rows idx of an (n, d) matrix whose rows are `stride` apart (columns contiguous): (len(idx),
    d), zeros where idx >= n (the ragged last block)."""
    return tl.load(ptr + idx[:, None] * stride + tl.arange(0, d)[None, :],
                   mask=idx[:, None] < n, other=0.0)


@triton.jit
def _visible(rows, cols, L, S):
    """(Br, Bc): True where query row r (position S - L + r) may see key c, and c exists."""
    return (cols[None, :] <= rows[:, None] + (S - L)) & (cols[None, :] < S)


@triton.jit
def _keep(seed, bh, rows, cols, L, S, dropout_p):
    """(Br, Bc): True where dropout keeps P_ij. A counter-based random number (Philox, tl.rand)
    of the seed and the element's index in the (B*H, L, S) attention tensor: any program, forward
    or backward, draws any element's number again without a mask ever being stored."""
    offset = (bh.to(tl.int64) * L + rows[:, None]) * S + cols[None, :]
    return tl.rand(seed, offset) >= dropout_p


@triton.jit
def _flash_forward(Q, K, V, O, LSE, Visits,
                   q_sb, q_sh, q_sl, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl, o_sb, o_sh, o_sl,
                   H, L, S, scale, dropout_p, seed,
                   d: tl.constexpr, Br: tl.constexpr, Bc: tl.constexpr,
                   DROPOUT: tl.constexpr, COUNT: tl.constexpr, PRECISION: tl.constexpr):
    """Algorithm 1 for one query block Q_i of one (batch, head): O_i and LSE_i."""
    bh, i = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)  # 64-bit: offsets pass 2^31 at scale
    Q, K, V = Q + b * q_sb + h * q_sh, K + b * k_sb + h * k_sh, V + b * v_sb + h * v_sh
    rows = i * Br + tl.arange(0, Br)  # query rows of this block
    Q_i = _tile(Q, rows, L, q_sl, d)  # (Br, d)
    m_i = tl.full([Br], float("-inf"), tl.float32)  # running maximum of each row
    l_i = tl.zeros([Br], tl.float32)  # running sum of exp(S - m_i)
    O_i = tl.zeros([Br, d], tl.float32)  # running sum of exp(S - m_i) V, unnormalised
    # Key blocks beyond the last row's position lie wholly in the future: never visited. Keys
    # before `free` are seen by every row of the block: no mask on those tiles.
    end = tl.minimum((i + 1) * Br, L) + S - L  # one past the last visible key
    free = tl.minimum(i * Br + S - L + 1, S)
    for j in range(0, tl.cdiv(end, Bc)):
        cols = j * Bc + tl.arange(0, Bc)
        K_j, V_j = _tile(K, cols, S, k_sl, d), _tile(V, cols, S, v_sl, d)  # (Bc, d) each
        S_ij = tl.dot(Q_i, tl.trans(K_j), input_precision=PRECISION) * scale  # (Br, Bc)
        if (j + 1) * Bc > free:  # the diagonal, or keys past S: hide them from the softmax
            S_ij = tl.where(_visible(rows, cols, L, S), S_ij, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(S_ij, 1))  # finite: every row sees key 0 in block 0
        P_ij = tl.exp(S_ij - m_new[:, None])  # (Br, Bc)
        alpha = tl.exp(m_i - m_new)  # rescales what was summed under the old maximum
        l_i = alpha * l_i + tl.sum(P_ij, 1)  # the softmax's denominator counts dropped entries
        if DROPOUT:  # drop after normalising: O = (softmax(S) * keep / (1 - p)) V
            P_ij = tl.where(_keep(seed, bh, rows, cols, L, S, dropout_p),
                            P_ij / (1 - dropout_p), 0.0)
        O_i = O_i * alpha[:, None] + tl.dot(P_ij.to(V_j.dtype), V_j, input_precision=PRECISION)
        m_i = m_new
    O_i = O_i / l_i[:, None]
    o_ptr = O + b * o_sb + h * o_sh + rows[:, None] * o_sl + tl.arange(0, d)[None, :]
    tl.store(o_ptr, O_i.to(O.dtype.element_ty), mask=rows[:, None] < L)
    tl.store(LSE + bh * L + rows, m_i + tl.log(l_i), mask=rows < L)
    if COUNT:  # for tests: how many key blocks this program visited
        tl.store(Visits + bh * tl.num_programs(1) + i, tl.cdiv(end, Bc))


@triton.jit
def _flash_backward_dkdv(Q, K, V, dO, LSE, Delta, dK, dV,
                         q_sb, q_sh, q_sl, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl,
                         do_sb, do_sh, do_sl, dk_sb, dk_sh, dk_sl,
                         H, L, S, scale, dropout_p, seed,
                         d: tl.constexpr, Br: tl.constexpr, Bc: tl.constexpr,
                         DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    """Algorithm 2, outer loop: dK_j and dV_j for one key block, walking the query blocks that see
    it. P_ij is rebuilt from Q_i, K_j and LSE_i; Delta_i = rowsum(dO_i * O_i) (see _backward)."""
    bh, j = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    Q, K, V = Q + b * q_sb + h * q_sh, K + b * k_sb + h * k_sh, V + b * v_sb + h * v_sh
    dO = dO + b * do_sb + h * do_sh
    cols = j * Bc + tl.arange(0, Bc)
    K_j, V_j = _tile(K, cols, S, k_sl, d), _tile(V, cols, S, v_sl, d)  # (Bc, d) each
    dK_j = tl.zeros([Bc, d], tl.float32)
    dV_j = tl.zeros([Bc, d], tl.float32)
    # Row r sees key j*Bc only if S - L + r >= j*Bc: the query blocks before that see none of
    # this block's keys (the backward's skipped tiles). Rows past L load as zeros (Q_i, dO_i,
    # LSE_i, Delta_i) and so add nothing.
    first = tl.maximum(j * Bc - (S - L), 0) // Br
    for i in range(first, tl.cdiv(L, Br)):
        rows = i * Br + tl.arange(0, Br)
        Q_i, dO_i = _tile(Q, rows, L, q_sl, d), _tile(dO, rows, L, do_sl, d)  # (Br, d) each
        LSE_i = tl.load(LSE + bh * L + rows, mask=rows < L, other=0.0)
        Delta_i = tl.load(Delta + bh * L + rows, mask=rows < L, other=0.0)
        S_ij = tl.dot(Q_i, tl.trans(K_j), input_precision=PRECISION) * scale  # (Br, Bc)
        P_ij = tl.exp(S_ij - LSE_i[:, None])  # the forward's softmax, exactly
        if (j + 1) * Bc > tl.minimum(i * Br + S - L + 1, S):  # the forward's masked tiles
            P_ij = tl.where(_visible(rows, cols, L, S), P_ij, 0.0)
        dP_ij = tl.dot(dO_i, tl.trans(V_j), input_precision=PRECISION)  # dL/d(P_ij kept)
        Pd_ij = P_ij  # the weights V_j was multiplied by: P_ij after dropout
        if DROPOUT:
            keep = _keep(seed, bh, rows, cols, L, S, dropout_p)
            Pd_ij = tl.where(keep, P_ij / (1 - dropout_p), 0.0)
            dP_ij = tl.where(keep, dP_ij / (1 - dropout_p), 0.0)  # dL/dP_ij
        dV_j += tl.dot(tl.trans(Pd_ij).to(dO_i.dtype), dO_i, input_precision=PRECISION)
        dS_ij = P_ij * (dP_ij - Delta_i[:, None])  # softmax's backward, row by row
        dK_j += tl.dot(tl.trans(dS_ij).to(Q_i.dtype), Q_i, input_precision=PRECISION)
    dk_ptr = cols[:, None] * dk_sl + tl.arange(0, d)[None, :] + b * dk_sb + h * dk_sh
    tl.store(dK + dk_ptr, (dK_j * scale).to(dK.dtype.element_ty), mask=cols[:, None] < S)
    tl.store(dV + dk_ptr, dV_j.to(dV.dtype.element_ty), mask=cols[:, None] < S)


@triton.jit
def _flash_backward_dq(Q, K, V, dO, LSE, Delta, dQ,
                       q_sb, q_sh, q_sl, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl,
                       do_sb, do_sh, do_sl, dq_sb, dq_sh, dq_sl,
                       H, L, S, scale, dropout_p, seed,
                       d: tl.constexpr, Br: tl.constexpr, Bc: tl.constexpr,
                       DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    """dQ_i for one query block, walking the key blocks it sees, as the forward does. The paper
    adds each tile's dS_ij K_j into dQ_i with atomics from the dK/dV loop; a second pass instead
    recomputes S_ij and dP_ij (7 tile matmuls in all, not 5) but writes each dQ_i once, with no
    atomics: the gradients are the same bits on every run."""
    bh, i = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    Q, K, V = Q + b * q_sb + h * q_sh, K + b * k_sb + h * k_sh, V + b * v_sb + h * v_sh
    rows = i * Br + tl.arange(0, Br)
    Q_i, dO_i = _tile(Q, rows, L, q_sl, d), _tile(dO + b * do_sb + h * do_sh, rows, L, do_sl, d)
    LSE_i = tl.load(LSE + bh * L + rows, mask=rows < L, other=0.0)
    Delta_i = tl.load(Delta + bh * L + rows, mask=rows < L, other=0.0)
    dQ_i = tl.zeros([Br, d], tl.float32)
    end = tl.minimum((i + 1) * Br, L) + S - L
    free = tl.minimum(i * Br + S - L + 1, S)
    for j in range(0, tl.cdiv(end, Bc)):
        cols = j * Bc + tl.arange(0, Bc)
        K_j, V_j = _tile(K, cols, S, k_sl, d), _tile(V, cols, S, v_sl, d)
        S_ij = tl.dot(Q_i, tl.trans(K_j), input_precision=PRECISION) * scale
        P_ij = tl.exp(S_ij - LSE_i[:, None])
        if (j + 1) * Bc > free:
            P_ij = tl.where(_visible(rows, cols, L, S), P_ij, 0.0)
        dP_ij = tl.dot(dO_i, tl.trans(V_j), input_precision=PRECISION)
        if DROPOUT:
            dP_ij = tl.where(_keep(seed, bh, rows, cols, L, S, dropout_p),
                             dP_ij / (1 - dropout_p), 0.0)
        dS_ij = P_ij * (dP_ij - Delta_i[:, None])
        dQ_i += tl.dot(dS_ij.to(K_j.dtype), K_j, input_precision=PRECISION)
    dq_ptr = dQ + b * dq_sb + h * dq_sh + rows[:, None] * dq_sl + tl.arange(0, d)[None, :]
    tl.store(dq_ptr, (dQ_i * scale).to(dQ.dtype.element_ty), mask=rows[:, None] < L)


@triton.jit
def _dropout_keep(Keep, L, S, dropout_p, seed, Br: tl.constexpr, Bc: tl.constexpr):
    """Writes the keep-mask the kernels draw for one (Br, Bc) tile (tests; training never)."""
    bh, i, j = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows, cols = i * Br + tl.arange(0, Br), j * Bc + tl.arange(0, Bc)
    ptr = Keep + (bh.to(tl.int64) * L + rows[:, None]) * S + cols[None, :]
    tl.store(ptr, _keep(seed, bh, rows, cols, L, S, dropout_p).to(tl.int8),
             mask=(rows[:, None] < L) & (cols[None, :] < S))


# ---------------------------------------------------------------------------------------------
# 3. Launching them

# Whether triton.jit built the kernels for Triton's CPU interpreter (TRITON_INTERPRET=1 was set
# when this file was imported) rather than for compilation to a GPU.
INTERPRET = type(_flash_forward).__name__ == "InterpretedFunction"


def check(device, dtype):
    """Raise a one-line ValueError where the kernel cannot run: off CUDA without the interpreter,
    or bf16 under the interpreter (which computes bf16 dots wrongly, silently)."""
    if INTERPRET and dtype == torch.bfloat16:
        raise ValueError("attention='flash' under TRITON_INTERPRET=1 cannot run in bfloat16 "
                         "(Triton's interpreter computes bf16 dots wrongly): use float32 "
                         "(train.py --dtype float32)")
    if not INTERPRET and device.type != "cuda":
        raise ValueError(f"attention='flash' is a Triton kernel for CUDA GPUs, not {device.type}: "
                         "use 'sdpa' or 'manual' here, or set TRITON_INTERPRET=1 before starting "
                         "Python to run it (slowly) through Triton's interpreter")


def tiles(kernel, L, S, D):
    """(Br, Bc, warps) for one launch: TILES, cut down for short sequences (tl.dot needs 16), with
    4 warps for a cut-down tile (the byte decoder's 16 x 16 has too little work for 8)."""
    Br, Bc, warps = TILES[kernel][max(D, 64)]
    small = (min(Br, max(16, triton.next_power_of_2(L))),
             min(Bc, max(16, triton.next_power_of_2(S))))
    return (*small, warps if small == (Br, Bc) else min(warps, 4))


def launch_grid(BH, n_blocks):
    """(batch x head, blocks) for a launch, checked against CUDA's limits (the interpreter
    accepts any grid, so the tests check the shapes this returns)."""
    if BH > GRID_X_MAX or n_blocks > GRID_Y_MAX:
        raise ValueError(f"a grid of {BH} x {n_blocks} programs exceeds CUDA's limits")
    return (BH, n_blocks)


def _precision(dtype):
    """fp32 dots as torch's fp32 matmuls do them: TF32 only where torch allows it."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _strides(*tensors):  # (batch, head, row) strides of each (B, H, rows, D) tensor
    return [s for t in tensors for s in t.stride()[:3]]


def _rows_contiguous(t):  # the kernels read each row's D numbers as one contiguous run
    return t if t.stride(-1) == 1 else t.contiguous()


def _forward(q, k, v, dropout_p, seed, count=False):
    B, H, L, D = q.shape
    S = k.size(2)
    Br, Bc, warps = tiles("forward", L, S, D)
    o = q.new_empty(B, L, H, D).transpose(1, 2)  # (B, H, L, D) laid out as (B, L, H, D): the
    # caller's transpose(1, 2).reshape(B, L, C) is then free
    lse = q.new_empty(B * H, L, dtype=torch.float32)
    grid = launch_grid(B * H, triton.cdiv(L, Br))
    visits = torch.zeros(grid, dtype=torch.int32, device=q.device) if count else lse
    _flash_forward[grid](q, k, v, o, lse, visits, *_strides(q, k, v, o), H, L, S,
                         1 / math.sqrt(D), dropout_p, seed, d=D, Br=Br, Bc=Bc,
                         DROPOUT=dropout_p > 0, COUNT=count, PRECISION=_precision(q.dtype),
                         num_warps=warps)
    return (o, lse, visits) if count else (o, lse)


def _backward(do, q, k, v, o, lse, dropout_p, seed):
    B, H, L, D = q.shape
    S = k.size(2)
    do = _rows_contiguous(do)
    delta = (do.float() * o.float()).sum(-1).view(B * H, L)  # Delta_i = rowsum(dO_i * O_i)
    dq = torch.empty_like(o)  # o's layout: (B, L, H, D) in memory
    dk, dv = k.new_empty(B, S, H, D).transpose(1, 2), v.new_empty(B, S, H, D).transpose(1, 2)
    args = (H, L, S, 1 / math.sqrt(D), dropout_p, seed)
    meta = dict(d=D, DROPOUT=dropout_p > 0, PRECISION=_precision(q.dtype))
    Br, Bc, warps = tiles("dkdv", L, S, D)
    _flash_backward_dkdv[launch_grid(B * H, triton.cdiv(S, Bc))](
        q, k, v, do, lse, delta, dk, dv, *_strides(q, k, v, do, dk), *args, Br=Br, Bc=Bc,
        num_warps=warps, **meta)
    Br, Bc, warps = tiles("dq", L, S, D)
    _flash_backward_dq[launch_grid(B * H, triton.cdiv(L, Br))](
        q, k, v, do, lse, delta, dq, *_strides(q, k, v, do, dq), *args, Br=Br, Bc=Bc,
        num_warps=warps, **meta)
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """The kernels joined for autograd. Saved for the backward: q, k, v, O and one LSE number per
    row; never P (L x S), never a dropout mask (the seed regenerates it)."""

    @staticmethod
    def forward(ctx, q, k, v, dropout_p, seed):
        o, lse = _forward(q, k, v, dropout_p, seed)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.dropout_p, ctx.seed = dropout_p, seed
        return o

    @staticmethod
    def backward(ctx, do):
        dq, dk, dv = _backward(do, *ctx.saved_tensors, ctx.dropout_p, ctx.seed)
        return dq, dk, dv, None, None


def draw_seed():
    """The dropout seed, from torch's CPU generator: torch.manual_seed makes a run repeat, and
    activation checkpointing, which restores that generator, recomputes the same masks."""
    return int(torch.randint(2 ** 31 - 1, ()))


@torch.compiler.disable  # torch.compile runs it as it is, between graphs (one break per call)
def flash_attention(q, k, v, dropout_p=0.0, seed=None):
    """Causal attention of q: (B, H, L, D), the last L of S positions, over k, v: (B, H, S, D).
    Returns (B, H, L, D). D in 16, 32, 64, 128; fp32, fp16 or bf16 in, fp32 inside."""
    check(q.device, q.dtype)
    D = q.size(-1)
    if D not in (16, 32, 64, 128):
        raise ValueError(f"attention='flash' needs a head size of 16, 32, 64 or 128, not {D}")
    k, v = k.to(q.dtype), v.to(q.dtype)
    q, k, v = map(_rows_contiguous, (q, k, v))
    if dropout_p > 0 and seed is None:
        seed = draw_seed()
    return FlashAttention.apply(q, k, v, float(dropout_p), 0 if seed is None else seed)


def dropout_keep(seed, B, H, L, S, dropout_p, device):
    """The (B, H, L, S) keep-mask the kernels use for this seed (tests apply it in the manual
    path). Built by the kernels' own _keep; training never builds it."""
    keep = torch.empty(B * H, L, S, dtype=torch.int8, device=device)
    _dropout_keep[(B * H, triton.cdiv(L, 16), triton.cdiv(S, 16))](
        keep, L, S, float(dropout_p), seed, Br=16, Bc=16)
    return keep.view(B, H, L, S).bool()
