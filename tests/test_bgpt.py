"""Properties of the model in bgpt.py on tiny CPU configs: causality, loss at initialisation,
overfitting, attention cores, KV caches, greedy generation, parameter count, released weights."""

import math

import pytest
import torch
import torch.nn.functional as F

import bgpt
from bench import generate_uncached  # the oracle: the released code's way, no KV caches
from bgpt import BGPT, EOP, VOCAB_SIZE, BGPTClassifier, BGPTConfig, sample
from conftest import official_state_dict

TINY = dict(patch_size=4, max_patches=8, hidden_size=32, patch_layers=2, byte_layers=2, n_heads=4,
            dropout=0.0)


def tiny(**kw):
    torch.manual_seed(0)
    return BGPT(BGPTConfig(**{**TINY, **kw})).eval()


def random_ids(B, N, P, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB_SIZE, (B, N * P), generator=g)


def test_logits_shape_and_initial_loss():
    model = BGPT(BGPTConfig(patch_size=16, max_patches=16, hidden_size=64, patch_layers=2,
                            byte_layers=1, n_heads=2, dropout=0.0))
    x = random_ids(4, 16, 16)
    logits, loss = model(x)
    assert logits.shape == (4, 15 * 16, VOCAB_SIZE)
    assert abs(loss.item() - math.log(VOCAB_SIZE)) < 0.1  # a uniform guess over 257 ids


@pytest.mark.parametrize("attention", ["fused", "manual"])
def test_causality(attention):
    """Changing the id at t changes no prediction of an id at or before t."""
    model = tiny(attention=attention)
    P, x = 4, random_ids(1, 8, 4)
    base, _ = model(x)
    for t in [4, 5, 7, 8, 13, 22, 31]:  # first bytes, middles and ends of patches
        y = x.clone()
        y[0, t] = (y[0, t] + 1) % VOCAB_SIZE
        logits, _ = model(y)
        # logits[:, i] predicts x[:, P + i]: ids up to t are at i <= t - P
        assert torch.equal(logits[0, :t - P + 1], base[0, :t - P + 1]), t
        if t < x.size(1) - 1:  # and the next prediction does see it
            assert not torch.allclose(logits[0, t - P + 1], base[0, t - P + 1])


def test_header_shapes_every_prediction():
    model = tiny()
    x = random_ids(1, 3, 4)
    y = x.clone()
    y[0, 0] += 1
    assert not torch.allclose(model(x)[0][0, 0], model(y)[0][0, 0])


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = BGPT(BGPTConfig(**TINY)).train()
    x = random_ids(2, 6, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_mask_excludes_padding_patches():
    model = tiny()
    x = random_ids(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    logits, loss = model(x, mask)
    full, _ = model(x)
    # The loss is the mean over exactly the kept patches (row 0: patches 1..5, row 1: 1..2).
    targets = x.view(2, 6, 4)[:, 1:].reshape(2, -1)
    keep = mask[:, 1:].repeat_interleave(4, dim=1).bool()
    expected = F.cross_entropy(full[keep], targets[keep])
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(logits[keep], full[keep], atol=1e-6) and (logits[~keep] == 0).all()


def test_patch_sampling_trains_on_a_subset():
    torch.manual_seed(0)
    model = BGPT(BGPTConfig(**TINY, byte_patches=3)).train()
    x = random_ids(2, 8, 4)
    logits, loss = model(x)
    computed = logits.view(2 * 7, 4, VOCAB_SIZE).abs().sum((1, 2)) > 0
    assert computed.sum() == 3 and torch.isfinite(loss)
    model.eval()  # evaluation always uses every patch
    assert (model(x)[0].view(14, -1).abs().sum(1) > 0).all()


def _loss_grads_and_saved_bytes(checkpoint):
    """One training forward and backward with dropout on: the loss, every gradient, and the bytes
    of the tensors autograd kept for the backward pass."""
    torch.manual_seed(0)
    model = BGPT(BGPTConfig(**{**TINY, "dropout": 0.1, "checkpoint": checkpoint})).train()
    x = random_ids(2, 8, 4)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    torch.manual_seed(1)  # the same dropout masks for both
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x)
    loss.backward()
    return loss, [p.grad for p in model.parameters()], sum(saved)


def test_activation_checkpointing_same_gradients_less_memory():
    loss, grads, saved = _loss_grads_and_saved_bytes(checkpoint=False)
    loss_c, grads_c, saved_c = _loss_grads_and_saved_bytes(checkpoint=True)
    assert torch.equal(loss, loss_c)  # same dropout masks: the recompute restores the RNG state
    for g, gc in zip(grads, grads_c):
        torch.testing.assert_close(gc, g, rtol=1e-5, atol=1e-6)
    assert saved_c < saved / 2  # only each block's input is kept


@pytest.mark.parametrize("cached", [False, True])
def test_attention_cores_agree(cached):
    fused, manual = tiny(attention="fused"), tiny(attention="manual")
    manual.load_state_dict(fused.state_dict())
    x = random_ids(3, 8, 4)
    if not cached:
        diff = (fused(x)[0] - manual(x)[0]).abs().max()
    else:  # 3 patches, then 1, then 4 through the patch decoder's KV caches: the three mask cases
        patches, outs = x.view(3, 8, 4), []  # L == S == 3; L == 1 < S == 4; 1 < L == 4 < S == 8
        for model in (fused, manual):
            caches = model.patch_decoder.transformer.new_caches()
            parts = [model.patch_decoder(patches[:, a:b], caches)
                     for a, b in [(0, 3), (3, 4), (4, 8)]]
            outs.append(torch.cat(parts, 1))  # (3, 8, C)
        diff = (outs[0] - outs[1]).abs().max()
        assert torch.allclose(outs[0], fused.patch_decoder(patches), atol=1e-5)  # = one pass
    assert diff < 1e-5


def never_end(model):
    """Make EOP's logit -100 whatever the input: the byte decoder's output is ln_f(x) @ embed.T, so
    pin ln_f's coordinate 0 to 10 and give EOP's row -10 there and 0 elsewhere."""
    bd = model.byte_decoder
    with torch.no_grad():
        bd.transformer.ln_f.weight[0], bd.transformer.ln_f.bias[0] = 0.0, 10.0
        bd.embed.weight[EOP] = 0.0
        bd.embed.weight[EOP, 0] = -10.0
    return model


def check_length(new, n):
    """generate()'s contract: n new ids per row, fewer only when every row has ended, and then
    it stopped at the id where the last row ended."""
    if new.size(1) != n:
        ended = (new == EOP).any(1)
        assert new.size(1) < n and ended.all() and not (new[:, :-1] == EOP).any(1).all()


@pytest.mark.parametrize("prompt_len", [4, 6, 8, 11])
def test_greedy_generation_equals_repeated_argmax(prompt_len):
    """top_k=1 gives exactly what argmax over the full forward gives, id by id."""
    model = tiny()
    x = random_ids(2, 8, 4, seed=prompt_len)[:, :prompt_len]
    x[x == EOP] = 7  # no early end inside the prompt
    new = model.generate(x, 14, top_k=1)
    check_length(new, 14)
    seq = x
    for _ in range(new.size(1)):
        T = seq.size(1)
        padded = F.pad(seq, (0, 4 - T % 4), value=EOP)  # room for the next id in the last patch
        logits, _ = model(padded)
        nxt = logits[:, T - 4].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], 1)
    expected = seq[:, prompt_len:]
    # generate() pads a row with EOP once it has produced its first EOP
    for row in range(2):
        e = expected[row].tolist()
        if EOP in e:
            e = e[:e.index(EOP) + 1] + [EOP] * (len(e) - e.index(EOP) - 1)
        assert new[row].tolist() == e


@pytest.mark.parametrize("kw", [dict(top_k=1), dict(temperature=1.0),
                                dict(temperature=0.8, top_k=20, top_p=0.9)])
@pytest.mark.parametrize("prompt_len", [4, 5, 11])
def test_cached_generation_equals_uncached_oracle(kw, prompt_len):
    """Greedy and seeded sampling: the KV-cached generate() gives the oracle's ids, across patch
    boundaries (P = 4, 27 new ids) and from prompts that end inside a patch or on its border."""
    model = tiny(max_patches=16)  # room for 11 + 27 ids
    x = random_ids(3, 3, 4)[:, :prompt_len]
    x[x == EOP] = 0
    a = model.generate(x, 27, generator=torch.Generator().manual_seed(3), **kw)
    b = generate_uncached(model, x, 27, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(a, b)
    check_length(a, 27)
    never_end(model)  # no row can end: exactly the 27 ids asked for, still the oracle's
    a = model.generate(x, 27, generator=torch.Generator().manual_seed(4), **kw)
    b = generate_uncached(model, x, 27, generator=torch.Generator().manual_seed(4), **kw)
    assert a.shape == (3, 27) and torch.equal(a, b)


def test_generation_stops_at_eop_and_context():
    model = tiny()
    with torch.no_grad():  # make EOP overwhelmingly likely: generation stops after one id
        model.byte_decoder.embed.weight[EOP] += 50
        model.byte_decoder.transformer.ln_f.bias.copy_(torch.ones(32))
        model.byte_decoder.transformer.ln_f.weight.zero_()
    out = model.generate(torch.zeros(2, 4, dtype=torch.long), 10)
    assert out.tolist() == [[EOP], [EOP]]
    # The context holds 8 patches = 32 ids: a 30-id prompt leaves room for exactly 2.
    model = never_end(tiny())
    assert model.generate(torch.zeros(1, 30, dtype=torch.long), 10, top_k=1).shape == (1, 2)
    assert model.generate(torch.zeros(1, 32, dtype=torch.long), 10).shape == (1, 0)


def test_sample_draws_from_the_filtered_distribution():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)

    def freq(ids):
        return torch.bincount(ids, minlength=5).float() / len(ids)

    p = logits[0].softmax(-1)  # 0.64, 0.23, 0.09, 0.03, 0.01
    assert (freq(sample(logits, generator=g)) - p).abs().max() < 0.015
    cooled = (logits[0] / 0.5).softmax(-1)
    assert (freq(sample(logits, temperature=0.5, generator=g)) - cooled).abs().max() < 0.015
    top2 = torch.tensor([p[0], p[1], 0, 0, 0]) / (p[0] + p[1])  # top_k 2: ids 0, 1, renormalised
    assert (freq(sample(logits, top_k=2, generator=g)) - top2).abs().max() < 0.015
    assert p[0] < 0.8 < p[0] + p[1]  # so top_p 0.8 keeps exactly ids 0 and 1
    assert (freq(sample(logits, top_p=0.8, generator=g)) - top2).abs().max() < 0.015
    assert sample(logits[:1], temperature=0).item() == sample(logits[:1], top_k=1).item() == 0
    a = sample(logits[:50], generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, sample(logits[:50], generator=torch.Generator().manual_seed(5)))


def test_init_scales_residual_projections_by_each_decoders_own_depth():
    """GPT-2's 0.02 / sqrt(2 * layers) on attn.proj and mlp.proj, with the layers of the decoder
    the projection belongs to (the release builds two GPT-2 models): 8 patch layers -> 0.005,
    2 byte layers -> 0.01. Counting both decoders' 10 layers would give 0.0045 for both."""
    torch.manual_seed(0)
    cfg = BGPTConfig(patch_size=4, max_patches=8, hidden_size=64, patch_layers=8, byte_layers=2,
                     n_heads=4)

    def std(module, suffix):
        return torch.cat([p.flatten() for n, p in module.named_parameters()
                          if n.endswith(suffix)]).std()

    model = BGPT(cfg)
    clf = BGPTClassifier(cfg, n_classes=3)
    for decoder, layers in [(model.patch_decoder, 8), (model.byte_decoder, 2),
                            (clf.patch_decoder, 8)]:
        assert abs(std(decoder, "proj.weight") / (0.02 / math.sqrt(2 * layers)) - 1) < 0.03
        assert abs(std(decoder, "qkv.weight") / 0.02 - 1) < 0.03
        assert all((p == 0).all() for n, p in decoder.named_parameters() if n.endswith("bias"))


def test_paper_config_parameter_count():
    C, P, V, N = 768, 16, 257, 512
    block = 12 * C * C + 13 * C  # qkv 3C^2+3C, proj C^2+C, mlp 8C^2+5C, two LayerNorms 4C
    expected = (P * V * C + C + N * C + 12 * block + 2 * C  # patch decoder
                + V * C + P * C + 3 * block + 2 * C)  # byte decoder (output tied to its embedding)
    n = BGPT(BGPTConfig()).num_params()
    assert n == expected and 109e6 < n < 111e6  # "about 110M"


def test_bad_input_errors():
    model = tiny()
    with pytest.raises(ValueError, match="0..256"):
        model(torch.full((1, 8), 257))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        model(torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="max_patches"):
        model(torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(ValueError, match="header"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="not a released"):
        BGPT.from_official({"model": {"foo": torch.zeros(1)}})
    with pytest.raises(ValueError, match="n_heads"):
        BGPTConfig(hidden_size=30, n_heads=4)


# ---------------------------------------------------------------------------------------------
# Released checkpoints: a state dict in the released layout and an independent implementation of
# the released architecture straight from that layout (Conv1D (in, out) weights, a one-hot
# Linear patch embedding, a 17-position byte decoder fed [feature, b0..b15]).


def reference_gpt2(sd, prefix, h, n_layers, n_heads):
    B, T, C = h.shape
    ln = lambda x, n: F.layer_norm(x, (C,), sd[n + ".weight"], sd[n + ".bias"], 1e-5)  # noqa: E731
    conv1d = lambda x, n: x @ sd[n + ".weight"] + sd[n + ".bias"]  # noqa: E731
    h = h + sd[prefix + "wpe.weight"][:T]
    causal = torch.ones(T, T).tril().bool()
    for i in range(n_layers):
        p = f"{prefix}h.{i}."
        q, k, v = conv1d(ln(h, p + "ln_1"), p + "attn.c_attn").split(C, -1)
        heads = lambda t: t.view(B, T, n_heads, -1).transpose(1, 2)  # noqa: E731
        w = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(C // n_heads)
        w = w.masked_fill(~causal, -1e9).softmax(-1)
        y = (w @ heads(v)).transpose(1, 2).reshape(B, T, C)
        h = h + conv1d(y, p + "attn.c_proj")
        m = conv1d(ln(h, p + "ln_2"), p + "mlp.c_fc")
        gelu = 0.5 * m * (1 + torch.tanh(math.sqrt(2 / math.pi) * (m + 0.044715 * m ** 3)))
        h = h + conv1d(gelu, p + "mlp.c_proj")
    return ln(h, prefix + "ln_f")


def reference_logits(sd, x, P, patch_layers, byte_layers, n_heads):
    B, N = x.shape[0], x.shape[1] // P
    onehot = F.one_hot(x.view(B, N, P), VOCAB_SIZE).float().view(B, N, P * VOCAB_SIZE)
    emb = (onehot @ sd["patch_level_decoder.patch_embedding.weight"].T
           + sd["patch_level_decoder.patch_embedding.bias"])
    feats = reference_gpt2(sd, "patch_level_decoder.base.", emb, patch_layers, n_heads)
    wte = sd["byte_level_decoder.base.transformer.wte.weight"]
    targets = x.view(B, N, P)[:, 1:]
    inputs = torch.cat([feats[:, :-1, None], wte[targets]], 2)  # [f_i, b0..b15]: P + 1 positions
    inputs = inputs.view(B * (N - 1), P + 1, -1)
    h = reference_gpt2(sd, "byte_level_decoder.base.transformer.", inputs, byte_layers, n_heads)
    logits = h @ sd["byte_level_decoder.base.lm_head.weight"].T
    return logits[:, :P].reshape(B, (N - 1) * P, VOCAB_SIZE)  # position 16 predicts nothing


def test_from_official_matches_released_architecture():
    C = 128  # two 64-wide heads, as the release infers
    sd = official_state_dict(C=C, P=4, N=8, patch_layers=2, byte_layers=3)
    model = BGPT.from_official({"model": sd}).eval()
    cfg = model.config
    assert (cfg.patch_size, cfg.max_patches, cfg.hidden_size) == (4, 8, C)
    assert (cfg.patch_layers, cfg.byte_layers, cfg.n_heads) == (2, 3, 2)
    x = random_ids(2, 8, 4)
    ours, _ = model(x)
    expected = reference_logits(sd, x, 4, 2, 3, 2)
    assert (ours - expected).abs().max() < 1e-4 * expected.abs().max()
    # The weights it loaded are the converted state dict, every tensor and nothing else.
    converted, state = bgpt.convert_official(sd, cfg), model.state_dict()
    assert state.keys() == converted.keys()
    assert all(torch.equal(state[k], converted[k]) for k in state)


def test_from_official_rejects_wrong_layout():
    sd = official_state_dict(C=128)
    del sd["byte_level_decoder.base.transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match="c_fc.bias"):
        BGPT.from_official(sd)
    sd = official_state_dict(C=128)
    sd["something.else"] = torch.zeros(3)
    with pytest.raises(ValueError, match="something.else"):
        BGPT.from_official(sd)


def test_classifier_pools_real_patches_and_loads_weights():
    gen = tiny()
    clf = BGPTClassifier(gen.config, n_classes=3).load_patch_decoder(gen).eval()
    x = random_ids(2, 6, 4)
    feats = gen.patch_decoder(x.view(2, 6, 4))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    logits, loss = clf(x, mask, labels=torch.tensor([0, 2]))
    expected = clf.head(torch.stack([feats[0].mean(0), feats[1, :3].mean(0)]))
    assert torch.allclose(logits, expected, atol=1e-5) and loss.item() > 0
    # A released checkpoint's patch decoder loads the same way.
    sd = official_state_dict(C=128)
    clf = BGPTClassifier.from_official(sd, n_classes=4).eval()
    ref = BGPT.from_official(sd).eval()
    assert torch.equal(clf.patch_decoder(x.view(2, 6, 4)), ref.patch_decoder(x.view(2, 6, 4)))
