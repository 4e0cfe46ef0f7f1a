"""
bGPT: a byte-level GPT that reads any file as raw bytes (Wu et al., "Beyond Language Models: Byte
Models are Digital World Simulators", arXiv:2402.19155).

A file becomes ids 0..256 (bytes plus the end-of-patch id EOP, see data.py) cut into patches of
P = 16. The PatchDecoder sees one position per patch and turns patches 0..i into a feature that
predicts patch i+1; the ByteDecoder restarts at every patch and predicts the patch's 16 bytes
from that feature, one at a time. So a context of N = 512 patches covers 8 KiB while the big
decoder attends over only 512 positions. This file holds the model and nothing else (torch only).

Shapes in comments: B batch, N patches, P bytes per patch, T = N*P ids, C hidden width, V = 257
ids, H heads, D = C/H head size, M rows handed to the byte decoder (one per predicted patch),
L positions in the current call, S positions attended to (with a KV cache: cached + L).
"""

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

EOP = 256  # end-of-patch id: pads a patch, fills the end patch; never a content byte
VOCAB_SIZE = 257  # 256 byte values + EOP
SDPA_MAX_BATCH = 65_535  # CUDA's fused SDPA kernels put the batch on a grid axis capped here


def doc(default, help):
    """A config field with its meaning attached: train.py turns it into the --flag's help."""
    return field(default=default, metadata={"help": help})


@dataclass
class BGPTConfig:
    patch_size: int = doc(16, "P, bytes per patch")
    max_patches: int = doc(512, "context in patches, header included (512 x 16 = 8 KiB)")
    hidden_size: int = doc(768, "C, the width of both decoders")
    patch_layers: int = doc(12, "GPT-2 blocks in the patch decoder")
    byte_layers: int = doc(3, "GPT-2 blocks in the byte decoder")
    n_heads: int = doc(12, "H, attention heads; head size D = C / H (768 / 12 = 64)")
    dropout: float = doc(0.1, "after embeddings, on attention weights and residuals (release 0.1)")
    attention: str = doc("sdpa", "'sdpa': PyTorch's fused kernel; 'flash': ours, flash.py (Triton: "
                                 "CUDA, or TRITON_INTERPRET=1); 'manual': written out")
    byte_patches: int = doc(0, "patch sampling: the byte decoder trains on this many patches of a "
                               "batch (0 = all)")
    checkpoint: bool = doc(False, "activation checkpointing: recompute each block in the backward "
                                  "pass (less memory, a third more compute)")

    def __post_init__(self):
        for name in ("patch_size", "max_patches", "hidden_size", "patch_layers", "byte_layers",
                     "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.hidden_size % self.n_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"n_heads {self.n_heads}")
        self.attention = {"fused": "sdpa"}.get(self.attention, self.attention)  # its old name
        if self.attention not in ("sdpa", "flash", "manual"):
            raise ValueError(f"attention must be sdpa, flash or manual, not {self.attention!r}")


# ---------------------------------------------------------------------------------------------
# The transformer pieces, shared by both decoders


class KVCache:
    """Keys and values of the positions one attention layer has already seen. Generation adds one
    position per call (a byte to the byte decoder, a patch to the patch decoder); with a cache a
    call computes q, k, v for its new positions only and attends over the stored ones too, where
    the released code re-runs each decoder over its whole prefix. The buffer is allocated once,
    in the dtype the layer produces (bf16 under autocast), and reused after reset()."""

    def __init__(self, max_len):
        self.max_len = max_len
        self.len = 0  # positions stored so far
        self.k = self.v = None

    def reset(self):
        self.len = 0

    def append(self, k, v):  # k, v: (B, H, L, D) for the L new positions
        B, H, L, D = k.shape
        if self.k is None or self.k.shape[0] != B or self.k.dtype != k.dtype:
            self.k = k.new_empty(B, H, self.max_len, D)
            self.v = v.new_empty(B, H, self.max_len, D)
        if self.len + L > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.len + L} asked for")
        self.k[:, :, self.len:self.len + L] = k
        self.v[:, :, self.len:self.len + L] = v
        self.len += L
        return self.k[:, :, :self.len], self.v[:, :, :self.len]  # (B, H, S, D) each


def causal_mask(L, S, device):
    """(L, S), True where a query may see a key: the L queries are the last L of S positions, so
    query i sits at position S - L + i and sees keys 0 .. S - L + i."""
    return torch.ones(L, S, dtype=torch.bool, device=device).tril(diagonal=S - L)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, one fused q/k/v projection (GPT-2's c_attn). Three equal
    cores: 'sdpa' PyTorch's kernel, 'flash' ours (flash.py), 'manual' the (L, S) matrix in full."""

    def __init__(self, config):
        super().__init__()
        C = config.hidden_size
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(C, 3 * C)  # q, k, v side by side along the output: (C) -> (3C)
        self.proj = nn.Linear(C, C)  # GPT-2's c_proj
        self.dropout = config.dropout
        self.resid_drop = nn.Dropout(config.dropout)
        self.attention = config.attention

    def forward(self, x, cache=None):  # x: (B, L, C)
        B, L, C = x.shape
        H, D = self.n_heads, C // self.n_heads
        qkv = self.qkv(x).view(B, L, 3, H, D).permute(2, 0, 3, 1, 4)  # -> (3, B, H, L, D)
        q, k, v = qkv.unbind(0)  # (B, H, L, D) each
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, S, D): the cached positions, then these L
        S = k.size(2)
        p = self.dropout if self.training else 0.0
        if self.attention == "flash":  # tiles, a running max and sum: nothing L x S in memory
            from flash import flash_attention  # Triton, imported on this path only
            y = flash_attention(q, k, v, p)  # (B, H, L, D); the diagonal's offset S - L inside
        elif self.attention == "sdpa":
            # Query i is position S - L + i and sees keys 0 .. S - L + i. No cache: the plain
            # triangle, is_causal=True (a Python bool, not a traced L == S, for torch.compile).
            # L == 1 sees every key: no mask. 1 < L < S: the shifted triangle, spelled out.
            causal = cache is None or L == S
            mask = None if causal or L == 1 else causal_mask(L, S, x.device)
            sdpa = functools.partial(F.scaled_dot_product_attention, attn_mask=mask,
                                     dropout_p=p, is_causal=causal)
            n = SDPA_MAX_BATCH  # the byte decoder's M reaches it at batch 129 x 512 patches
            y = sdpa(q, k, v) if B <= n else torch.cat(
                [sdpa(q[i:i + n], k[i:i + n], v[i:i + n]) for i in range(0, B, n)])
        else:
            # The same computation written out: scores, causal mask, softmax, weighted values.
            att = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, H, L, D) @ (B, H, D, S)
            if L > 1:  # the triangle is_causal or mask stands for in the fused call
                att = att.masked_fill(~causal_mask(L, S, x.device), float("-inf"))
            att = F.dropout(att.softmax(dim=-1), p, self.training)  # (B, H, L, S)
            y = att @ v  # (B, H, L, S) @ (B, H, S, D) -> (B, H, L, D)
        y = y.transpose(1, 2).reshape(B, L, C)  # (B, H, L, D) -> (B, L, C): heads side by side
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.hidden_size
        self.fc = nn.Linear(C, 4 * C)  # GPT-2's c_fc: 768 -> 3072
        self.proj = nn.Linear(4 * C, C)  # GPT-2's c_proj
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))  # GPT-2's "gelu_new"


class Block(nn.Module):
    """A GPT-2 block: pre-LayerNorm attention and MLP, each added to the residual stream."""

    def __init__(self, config):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=1e-5)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.hidden_size, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Learned absolute positions, a stack of blocks, a final LayerNorm (GPT-2 without its token
    embedding: each decoder embeds its own inputs)."""

    def __init__(self, config, n_layers, n_positions):
        super().__init__()
        self.pos_emb = nn.Embedding(n_positions, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=1e-5)
        self.checkpoint = config.checkpoint

    def forward(self, x, caches=None):  # x: (B, L, C) input embeddings
        start = caches[0].len if caches else 0  # absolute position of the first new input
        # Rows start .. start+L-1 of the position table, as a view: no ids to build and look up.
        x = self.drop(x + self.pos_emb.weight[start:start + x.size(1)])  # (B, L, C) + (L, C)
        # Activation checkpointing keeps only each block's input and runs the block again in the
        # backward pass (a third more FLOPs, much less memory). The RNG state is restored, so the
        # dropout masks and the gradients are the plain path's. Training only (caches: generation).
        recompute = (self.checkpoint and self.training and caches is None
                     and torch.is_grad_enabled())
        for i, block in enumerate(self.blocks):
            if recompute:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, caches[i] if caches else None)
        return self.ln_f(x)  # (B, L, C)

    def new_caches(self):
        return [KVCache(self.pos_emb.num_embeddings) for _ in self.blocks]


# ---------------------------------------------------------------------------------------------
# The two decoders


class PatchDecoder(nn.Module):
    """Patches in, one feature per patch out; feature i summarises patches 0..i."""

    def __init__(self, config):
        super().__init__()
        self.patch_size = config.patch_size
        # The patch embedding. The release one-hot encodes each of the P ids of a patch (257
        # wide), flattens the patch to P x 257 = 4112 numbers and applies one Linear(4112 -> C).
        # A one-hot vector times a matrix just picks a row, so that Linear is the sum of P rows of
        # its (4112, C) weight: row p * 257 + id for the id at position p. We store those rows as
        # an embedding table and let F.embedding_bag gather and sum them in one op: no
        # (B, N, 4112) one-hot tensor, no (B, N, P, C) gathered tensor, and the same numbers.
        self.embed = nn.Embedding(config.patch_size * VOCAB_SIZE, config.hidden_size)  # (P*V, C)
        self.embed_bias = nn.Parameter(torch.zeros(config.hidden_size))  # the Linear's bias
        offsets = torch.arange(config.patch_size) * VOCAB_SIZE  # (P,): 0, 257, 514, ...
        self.register_buffer("offsets", offsets, persistent=False)
        self.transformer = Transformer(config, config.patch_layers, config.max_patches)

    def forward(self, patches, caches=None):  # patches: (B, N, P) ids
        B, N, P = patches.shape
        rows = (patches + self.offsets).view(B * N, P)  # id at position p -> row p*257 + id
        x = F.embedding_bag(rows, self.embed.weight, mode="sum")  # (B*N, P) -> (B*N, C)
        return self.transformer((x + self.embed_bias).view(B, N, -1), caches)  # (B, N, C)


class ByteDecoder(nn.Module):
    """Predicts the P bytes of one patch from the patch decoder's feature for it.

    For a patch with bytes b0..b15 its input is [feature, emb(b0), ..., emb(b14)] (16 positions)
    and position j predicts b_j: the feature takes the first slot, so b0 is predicted from the
    feature alone and b15 from the feature and b0..b14. Every patch is an independent sequence
    (the batch dimension here is M = one row per predicted patch), so the byte decoder's
    attention never spans more than 16 positions, however long the file is.
    """

    def __init__(self, config):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, config.hidden_size)  # (V, C), also the output layer
        # P positions suffice. The release feeds [feature, b0..b15] (17 positions, 17 position
        # rows) and discards the last output; attention is causal, so dropping it changes nothing.
        self.transformer = Transformer(config, config.byte_layers, config.patch_size)

    def forward(self, feature, ids, caches=None):
        # feature: (M, C) when a patch starts, None when continuing a cached patch; ids: (M, K)
        x = self.embed(ids)  # (M, K) -> (M, K, C)
        if feature is not None:
            x = torch.cat([feature.unsqueeze(1), x], dim=1)  # (M, 1+K, C)
        x = self.transformer(x, caches)
        return x @ self.embed.weight.t()  # tied output layer: (M, L, C) @ (C, V) -> (M, L, V)


# ---------------------------------------------------------------------------------------------
# The model


class BGPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.patch_decoder = PatchDecoder(config)
        self.byte_decoder = ByteDecoder(config)
        # The release builds two GPT-2 models, so each is initialised for its own depth.
        init_weights(self.patch_decoder, config.patch_layers)
        init_weights(self.byte_decoder, config.byte_layers)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, x, mask=None, return_logits=True):
        """x: (B, T) ids 0..256 with T = N*P, the first patch a header. mask: (B, N), 1 for real
        patches, 0 for batch padding (None: all real). Returns logits (B, T - P, V), where
        logits[:, i] predicts x[:, P + i] from every id before it, and the loss: mean
        cross-entropy over the bytes of the predicted patches that the mask keeps. A training
        step needs only the loss: return_logits=False returns None for the logits."""
        cfg = self.config
        P = cfg.patch_size
        B, N = check_ids(x, cfg).shape[0], x.shape[1] // P
        M = B * (N - 1)
        patches = x.view(B, N, P)  # (B, T) -> (B, N, P)
        features = self.patch_decoder(patches)  # (B, N, C)
        # The one-patch shift: the feature of patch i predicts patch i+1. So features 0..N-2
        # meet targets 1..N-1, the header (patch 0) is never predicted and the last feature has
        # nothing left to predict.
        features = features[:, :-1].reshape(M, -1)  # (B, N-1, C) -> (M, C)
        targets = patches[:, 1:].reshape(M, P)  # (B, N-1, P) -> (M, P)
        # Which rows the byte decoder runs on: the unmasked ones, and with patch sampling a random
        # subset of those (the byte decoder is 3 of 15 layers but runs on P = 16 positions per
        # patch, so it is most of the training FLOPs; sampling trades its gradient for speed).
        keep = None if mask is None else mask[:, 1:].reshape(M).bool()  # (M,)
        if self.training and 0 < cfg.byte_patches < (M if keep is None else int(keep.sum())):
            rows = torch.arange(M, device=x.device) if keep is None else keep.nonzero()[:, 0]
            chosen = rows[torch.randperm(len(rows), device=x.device)[:cfg.byte_patches]]
            keep = torch.zeros(M, dtype=torch.bool, device=x.device).index_fill_(0, chosen, True)
        rows = slice(None) if keep is None else keep
        logits = self.byte_decoder(features[rows], targets[rows][:, :-1])  # (M', P, V)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE).float(), targets[rows].reshape(-1))
        if not return_logits:
            return None, loss
        if keep is not None:  # rows the byte decoder skipped get zero logits
            logits = logits.new_zeros(M, P, VOCAB_SIZE).index_put_((keep,), logits)
        return logits.view(B, (N - 1) * P, VOCAB_SIZE), loss

    def generate(self, x, max_new_bytes, temperature=1.0, top_k=None, top_p=None, generator=None):
        """Continue x: (B, T0) ids, a header patch first; T0 need not be a multiple of P. Returns
        the new ids (B, K): K = max_new_bytes, fewer only when every row has ended (a row ends at
        its first EOP and is padded with EOP after it) or when the context is full."""
        # inference_mode: no_grad without autograd's per-tensor bookkeeping. Its tensors can never
        # join autograd or change in place outside it, so the result leaves as an ordinary copy.
        with torch.inference_mode():
            out = self._generate(x, max_new_bytes, temperature, top_k, top_p, generator)
        return out.clone()

    def _generate(self, x, max_new_bytes, temperature, top_k, top_p, generator):
        P = self.config.patch_size
        steps = Stepper(self, x)
        n_new = max(0, min(max_new_bytes, steps.room))
        out = []  # (B,) per new byte, stacked at the end: no copy into a buffer per byte
        done = torch.zeros(x.size(0), dtype=torch.bool, device=x.device)  # drew its EOP
        for i in range(n_new):
            nxt = sample(steps.logits, temperature, top_k, top_p, generator).masked_fill(done, EOP)
            out.append(nxt)
            done |= nxt == EOP
            # Whether every row has ended is a read from the device, a sync on a GPU: asked once
            # per patch, not per byte. The bytes drawn after the last row ended are cut below.
            if i == n_new - 1 or (len(steps.bytes) == P - 1 and bool(done.all())):
                break
            steps.push(nxt)
        out = torch.stack(out, 1) if out else x.new_empty(x.size(0), 0)  # (B, K)
        if out.numel() and bool(done.all()):  # keep up to the byte that ended the last row
            out = out[:, :int((out == EOP).int().argmax(1).max()) + 1]
        return out

    @classmethod
    def from_official(cls, state_dict, **overrides):
        """Build a model from a released checkpoint (torch.load(path) or its ["model"])."""
        sd = _official_model_dict(state_dict)
        config = official_config(sd, **overrides)
        model = cls(config)
        model.load_state_dict(convert_official(sd, config, byte_decoder=True))
        return model


class Stepper:
    """The cached one-step path: reads a prompt (B, T0), header patch first, then takes one id per
    row at a time (push) and keeps the logits (B, V) of the next. generate() samples from them;
    the arithmetic coder in coder.py codes with them, so its encoder and decoder compute every
    probability with this same code on the same shapes. One KV cache per block: the patch
    decoder's gain a position per finished patch; the byte decoder's restart at every patch."""

    def __init__(self, model, x):
        cfg = model.config
        self.P, self.model = cfg.patch_size, model
        B, T0 = check_ids(x, cfg, whole_patches=False).shape
        if T0 < self.P:
            raise ValueError(f"the prompt has {T0} ids; it needs at least the {self.P}-id header")
        self.room = cfg.max_patches * self.P - T0  # ids that still fit in the context
        self.patch_caches = model.patch_decoder.transformer.new_caches()
        self.byte_caches = model.byte_decoder.transformer.new_caches()
        n_full = T0 // self.P  # whole patches in the prompt, then the patch in progress
        self.bytes = list(x[:, n_full * self.P:].unbind(1))  # its ids so far, (B,) each
        full = x[:, :n_full * self.P].view(B, n_full, self.P)  # (B, T0) -> (B, n_full, P)
        feature = model.patch_decoder(full, self.patch_caches)[:, -1]  # (B, n_full, C) -> (B, C)
        self.logits = model.byte_decoder(feature, x[:, n_full * self.P:], self.byte_caches)[:, -1]

    def push(self, nxt):  # nxt: (B,) the next id of every row; a full context raises (KVCache)
        self.room -= 1
        self.bytes.append(nxt)
        if len(self.bytes) < self.P:  # one new position for the byte decoder: this id
            self.logits = self.model.byte_decoder(None, nxt[:, None], self.byte_caches)[:, -1]
            return
        # A finished patch: one new position for the patch decoder, then a fresh byte decoder.
        patch = torch.stack(self.bytes, 1)  # P x (B,) -> (B, P), once per patch
        feature = self.model.patch_decoder(patch[:, None], self.patch_caches)[:, -1]  # (B, C)
        for cache in self.byte_caches:
            cache.reset()
        self.bytes = []
        self.logits = self.model.byte_decoder(feature, patch[:, :0], self.byte_caches)[:, -1]


class BGPTClassifier(nn.Module):
    """The patch decoder, the mean of its features over the real patches, one Linear."""

    def __init__(self, config, n_classes):
        super().__init__()
        self.config = config
        self.patch_decoder = PatchDecoder(config)
        self.head = nn.Linear(config.hidden_size, n_classes)
        init_weights(self, config.patch_layers)

    def forward(self, x, mask=None, labels=None):  # x: (B, T) ids, mask: (B, N), labels: (B,)
        cfg = self.config
        B, N = check_ids(x, cfg).shape[0], x.shape[1] // cfg.patch_size
        features = self.patch_decoder(x.view(B, N, cfg.patch_size))  # (B, N, C)
        w = features.new_ones(B, N, 1) if mask is None else mask[:, :, None].to(features.dtype)
        pooled = (features * w).sum(1) / w.sum(1)  # mean over real patches: (B, N, C) -> (B, C)
        logits = self.head(pooled)  # (B, n_classes)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return logits, loss

    def load_patch_decoder(self, source):
        """Start from a generative model: a BGPT, its state dict, or a released checkpoint."""
        if isinstance(source, BGPT):
            source = source.state_dict()
        released = _official_model_dict(source)
        if any(k.startswith("patch_level_decoder.") for k in released):
            source = convert_official(released, self.config, byte_decoder=False)
        prefix = "patch_decoder."
        sd = {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}
        if not sd:
            raise ValueError("the state dict holds no patch decoder weights")
        self.patch_decoder.load_state_dict(sd)
        return self

    @classmethod
    def from_official(cls, state_dict, n_classes, **overrides):
        sd = _official_model_dict(state_dict)
        config = official_config(sd, byte_layers=1, **overrides)
        model = cls(config, n_classes).load_patch_decoder(sd)
        if "classifier.weight" in sd and sd["classifier.weight"].shape[0] == n_classes:
            model.head.load_state_dict({"weight": sd["classifier.weight"],
                                        "bias": sd["classifier.bias"]})
        return model


# ---------------------------------------------------------------------------------------------
# Helpers: input checks, initialisation, sampling


def check_ids(x, config, whole_patches=True):
    """Raise a ValueError naming the problem instead of an index error deep inside torch."""
    P = config.patch_size
    if x.dim() != 2 or x.dtype != torch.long:
        raise ValueError(f"ids must be a (B, T) LongTensor, got {tuple(x.shape)} {x.dtype}")
    # (On a GPU reading min and max would make every step wait for it; the embedding checks.)
    if x.numel() and x.device.type == "cpu" and (int(x.min()) < 0 or int(x.max()) > EOP):
        raise ValueError(f"ids must lie in 0..{EOP}, got {int(x.min())}..{int(x.max())}")
    if whole_patches and x.size(1) % P:
        raise ValueError(f"sequence length {x.size(1)} is not a multiple of patch_size {P}")
    if whole_patches and x.size(1) < 2 * P:
        raise ValueError(f"sequence length {x.size(1)} < 2 patches: a header and one more")
    if -(-x.size(1) // P) > config.max_patches:
        raise ValueError(f"{-(-x.size(1) // P)} patches exceed max_patches {config.max_patches}")
    return x


def init_weights(model, n_layers):
    """GPT-2's initialisation of a model n_layers deep: N(0, 0.02) weights, zero biases, and the
    projections that write into the residual stream (attn.proj, mlp.proj: two per block) scaled
    by 1/sqrt(2 * n_layers), so that the stream's variance stays near 1 through the stack."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(p)
        elif p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith("proj.weight") else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)


def sample(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Draw one id per row from (B, V) logits. top_k=1 or temperature=0 is greedy (argmax)."""
    if top_k == 1 or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if temperature != 1:  # x / 1 is x: one op per byte saved
        logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        # Keep the smallest set of most likely ids whose probabilities sum to at least top_p.
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V) each
        p = sorted_logits.softmax(dim=-1)
        drop = p.cumsum(dim=-1) - p >= top_p  # the ids before this one already reach top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)  # (B, V)
    # torch.multinomial(probs, 1) draws exactly so (argmax of p / q, q ~ Exp(1): Gumbel-max), the
    # same draws, after checking probs for nan, inf, < 0 and zero rows: 25 more ops per byte.
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / q).argmax(dim=-1)  # (B,)


# ---------------------------------------------------------------------------------------------
# Released checkpoints: their GPT-2 layout renamed to ours


def _official_model_dict(sd):
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise ValueError(f"expected a state dict, got {type(sd).__name__}")
    return sd


def official_config(sd, **overrides):
    """Read a BGPTConfig off a released state dict's tensor shapes."""
    key = "patch_level_decoder.patch_embedding.weight"
    if key not in sd:
        raise ValueError(f"not a released bGPT state dict: no '{key}'")
    hidden, flat = sd[key].shape  # Linear(P*257 -> C) stores (C, P*257)

    def n_layers(prefix):  # blocks 0, 1, ...: one ln_1 each
        return sum(k.startswith(prefix) and k.endswith(".ln_1.weight") for k in sd)

    if flat % VOCAB_SIZE:
        raise ValueError(f"'{key}' has {flat} inputs, not a multiple of {VOCAB_SIZE}")
    fields = dict(patch_size=flat // VOCAB_SIZE, hidden_size=hidden,
                  max_patches=sd["patch_level_decoder.base.wpe.weight"].shape[0],
                  patch_layers=n_layers("patch_level_decoder.base.h."),
                  byte_layers=n_layers("byte_level_decoder.base.transformer.h."),
                  n_heads=max(1, hidden // 64), dropout=0.0)  # the release's heads are 64 wide
    fields.update(overrides)
    return BGPTConfig(**fields)


def convert_official(sd, config, byte_decoder=True):
    """Rename a released state dict to ours. GPT-2's Conv1D keeps weights as (in, out), the
    transpose of nn.Linear; the release's patch embedding is a real nn.Linear (out, in), whose
    transpose is our (P*V, C) table. Raises ValueError on missing or unexpected tensors."""
    def stack(src, dst, n_layers):  # our name -> theirs, or (how to convert, theirs)
        out = {f"{dst}ln_f.weight": f"{src}ln_f.weight", f"{dst}ln_f.bias": f"{src}ln_f.bias"}
        for i in range(n_layers):
            s, d = f"{src}h.{i}.", f"{dst}blocks.{i}."
            for a, b in [("ln_1", "ln1"), ("ln_2", "ln2")]:
                out[f"{d}{b}.weight"], out[f"{d}{b}.bias"] = f"{s}{a}.weight", f"{s}{a}.bias"
            for a, b in [("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"),
                         ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj")]:
                out[f"{d}{b}.weight"] = ("T", f"{s}{a}.weight")
                out[f"{d}{b}.bias"] = f"{s}{a}.bias"
        return out

    names = stack("patch_level_decoder.base.", "patch_decoder.transformer.", config.patch_layers)
    names["patch_decoder.transformer.pos_emb.weight"] = "patch_level_decoder.base.wpe.weight"
    names["patch_decoder.embed.weight"] = ("T", "patch_level_decoder.patch_embedding.weight")
    names["patch_decoder.embed_bias"] = "patch_level_decoder.patch_embedding.bias"
    used = {"patch_level_decoder.base.wte.weight"}  # GPT2Model's token table, unused by bGPT
    if byte_decoder:
        b = "byte_level_decoder.base."
        names.update(stack(f"{b}transformer.", "byte_decoder.transformer.", config.byte_layers))
        names["byte_decoder.transformer.pos_emb.weight"] = ("ROWS", f"{b}transformer.wpe.weight")
        names["byte_decoder.embed.weight"] = f"{b}transformer.wte.weight"
        used.add(f"{b}lm_head.weight")  # tied to wte
    out = {}
    for ours, theirs in names.items():
        how, theirs = theirs if isinstance(theirs, tuple) else (None, theirs)
        if theirs not in sd:
            raise ValueError(f"not a released bGPT state dict: '{theirs}' is missing")
        t = sd[theirs]
        out[ours] = (t.t().contiguous() if how == "T" else t[:config.patch_size] if how == "ROWS"
                     else t)  # ROWS: the byte decoder's first P of the release's P + 1 positions
        used.add(theirs)
    extra = [k for k in sd if k not in used and not k.endswith((".attn.bias", ".attn.masked_bias"))
             and not (k.startswith("byte_level_decoder.") and not byte_decoder)
             and not k.startswith("classifier.")]
    if extra:
        raise ValueError(f"unexpected tensors in the released state dict: {extra[:5]}")
    return out
