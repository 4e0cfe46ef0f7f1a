"""sample.py on tiny models: prompts of any length, generation, the CPU simulation scores against
the rule baselines (counted here a second, independent way), and one-line errors."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cpu
import sample
from bgpt import BGPT, EOP, VOCAB_SIZE, BGPTClassifier, BGPTConfig
from cpu import ADD, HLT, INC, LOADI, MOV, POP
from conftest import run
from data import encode

TINY = dict(hidden_size=16, n_heads=2, patch_layers=1, byte_layers=1, dropout=0.0)


def tiny(P=4, N=8, seed=0):
    torch.manual_seed(seed)
    return BGPT(BGPTConfig(patch_size=P, max_patches=N, **TINY)).eval()


def never_eop(P=4, N=8):
    """A model that can never pick EOP: the byte decoder's last LayerNorm outputs the all-ones
    vector at every position, and EOP's row of the tied embedding makes that EOP's logit -100
    (every other logit stays within about +-1)."""
    model = tiny(P, N)
    C = model.config.hidden_size
    with torch.no_grad():
        ln = model.byte_decoder.transformer.ln_f
        ln.weight.zero_()
        ln.bias.fill_(1.0)
        model.byte_decoder.embed.weight[EOP] = -100.0 / C
    return model


def record_prompts(model):
    """Keep every prompt the model is asked to continue, and how many bytes it made."""
    seen = []
    original = model.generate

    def generate(x, max_new_bytes, **kw):
        out = original(x, max_new_bytes, **kw)
        seen.append((x.tolist(), max_new_bytes, out.tolist()))
        return out
    model.generate = generate
    return seen


# ---------------------------------------------------------------------------------------------
# Prompts of any length


@pytest.mark.parametrize("n", [0, 3, 4, 5, 37, 320])  # 320 = ten times the 8 x 4 = 32-id context
@pytest.mark.parametrize("max_new", [1, 6, 16, 100])
def test_prompt_ids_fit_the_context_and_end_with_the_prompt(n, max_new):
    cfg = BGPTConfig(patch_size=4, max_patches=8, **TINY)
    room = 7 * 4  # ids beside the header patch
    content = bytes((7 * i + 1) % 256 for i in range(n))
    ids, n_new = sample.prompt_ids(content, "txt", cfg, max_new)
    kept = len(ids) - 4
    assert ids[:4] == [116, 120, 116, EOP]  # the header patch
    assert ids[4:] == list(content[n - kept:])  # the prompt's last bytes, in order
    assert kept >= min(n, 4)  # at least one patch of prompt (all of a shorter one)
    assert (n - kept) % 4 == 0  # whole patches cut from the front: the file's patch grid
    assert 1 <= n_new <= max_new and len(ids) + n_new <= 8 * 4  # the new bytes fit too
    if n_new < max_new:  # shrunk: only because the smallest prompt leaves no more room
        assert kept <= min(n, 4) + 3 and n_new == room - kept
    else:  # not shrunk: no whole patch more of the prompt would have fitted
        assert kept == n or kept + 4 + max_new > room


def test_a_context_with_no_room_is_an_error():
    cfg = BGPTConfig(patch_size=4, max_patches=1, **TINY)
    with pytest.raises(ValueError, match="1-patch context"):
        sample.prompt_ids(b"abc", "txt", cfg, 10)


@pytest.mark.parametrize("n, max_new, n_new", [(320, 12, 12),  # ten times the context
                                               (3, 12, 12),  # shorter than a patch
                                               (0, 12, 12),  # empty
                                               (320, 100, 24)])  # too many new bytes: 28 - 4
def test_continue_a_prompt_of_any_length(tmp_path, capsys, n, max_new, n_new):
    model = never_eop()
    seen = record_prompts(model)
    prompt = tmp_path / "p.py"
    prompt.write_bytes(bytes((5 * i + 2) % 256 for i in range(n)))
    paths = sample.sample_files(model, out_dir=tmp_path / "s", prompt=prompt, num_samples=2,
                                max_new_bytes=max_new, seed=1)
    (x, asked, out), = seen
    content = prompt.read_bytes()
    assert asked == n_new and np.array(out).shape == (2, n_new)  # exactly n_new bytes, no EOP
    for row in x:
        assert len(row) + n_new <= 8 * 4  # fits the context
        assert row[:4] == [112, 121, EOP, EOP]  # the header of a .py file
        assert row[4:] == list(content[len(content) - (len(row) - 4):])  # the prompt's end
        assert len(row) > 4 or n == 0
    assert [p.name for p in paths] == ["sample_0.py", "sample_1.py"]
    for p, row in zip(paths, out):
        assert p.read_bytes() == content + bytes(row)  # the whole prompt file, then the new bytes
    out = capsys.readouterr().out.splitlines()
    shrunk = [line for line in out if line.startswith("max_new_bytes")]
    assert len(shrunk) == (n_new < max_new)


def test_generate_is_seeded_and_counts_only_made_bytes():
    model = tiny()
    prompts = [encode(b"", "txt", 4)[:4]] * 3
    a, speed = sample.generate(model, prompts, 12, seed=3)
    b, _ = sample.generate(model, prompts, 12, seed=3)
    c, _ = sample.generate(model, prompts, 12, seed=4)
    assert a == b and a != c and speed > 0
    greedy, _ = sample.generate(model, prompts, 12, temperature=0)
    assert greedy[0] == greedy[1] == greedy[2]
    for row in a:  # after a row's first EOP comes only EOP padding
        if EOP in row:
            assert set(row[row.index(EOP):]) == {EOP}


def test_new_files_without_a_prompt(tmp_path):
    model = never_eop()
    paths = sample.sample_files(model, out_dir=tmp_path, ext="md", num_samples=2, max_new_bytes=9,
                                show_chars=0)
    assert [p.name for p in paths] == ["sample_0.md", "sample_1.md"]
    assert [len(p.read_bytes()) for p in paths] == [9, 9]


# ---------------------------------------------------------------------------------------------
# CPU simulation. Toy traces: 16 bytes of memory (4 slots), registers A B, 8-byte states.

M, R, S = 16, 2, 8
A, B = 1, 2
PROGRAMS = [([(LOADI, 5, 0, 0), (ADD, A, 0, 0), (MOV, A, A, 0), (HLT, 0, 0, 0)], 1, [2, 3]),
            ([(INC, B, 0, 0), (POP, A, 0, 0), (HLT, 0, 0, 0)], 9, [0, 4])]


@pytest.fixture
def toy_traces(tmp_path):
    d = tmp_path / "traces"
    d.mkdir()
    for i, (program, acc, registers) in enumerate(PROGRAMS):
        (d / f"cpu_{i}.bin").write_bytes(cpu.simulate(program, M, R, acc, registers))
    return sorted(d.iterdir())


def independent_counts(files, guess_states):
    """Right bytes, states and computed bytes, and their totals, counted with numpy: a computed
    byte is a value byte (ACC at 1, registers from 6) that differs from the previous state."""
    right, total = np.zeros(3, int), np.zeros(3, int)
    for f in files:
        trace = np.frombuffer(f.read_bytes(), np.uint8).astype(int)
        states = trace[M:].reshape(-1, S)
        true = states[1:]
        guess = np.array(guess_states(f, trace, states)).reshape(true.shape)
        value = np.zeros(S, bool)
        value[[1, 6, 7]] = True
        computed = (states[1:] != states[:-1]) & value
        ok = guess == true
        right += [ok.sum(), ok.all(1).sum(), (ok & computed).sum()]
        total += [ok.size, len(ok), computed.sum()]
    return dict(zip(["byte_accuracy", "state_accuracy", "computed_accuracy"], right / total))


def test_rule_baselines_by_hand(toy_traces):
    r = sample.simulate(tiny(P=8, N=16), toy_traces, memory_size=M, num_registers=R)
    # Trace 0 (see test_cpu.test_rules_on_a_hand_made_trace): S_1..S_4, ACC computed in S_2, S_3.
    # Trace 1 (ACC 9, A 0, B 4): S_1 fetches INC B; S_2: B = 5, fetch POP A; S_3: A = ACC = 9,
    # fetch HLT (PC 3). 7 states, 56 bytes, 4 computed bytes.
    assert (r["traces"], r["states"], r["computed_bytes"]) == (2, 7, 4)
    # copy_fetch one step: wrong on the computed bytes only; right on S_1 (x2) and S_4 of trace 0.
    assert r["copy_fetch"]["one_step"] == {"byte_accuracy": 52 / 56, "state_accuracy": 3 / 7,
                                           "computed_accuracy": 0.0}
    # copy one step: wrong also on PC (6 of 7 steps: trace 0's last PC stays 3) and on the IR
    # bytes that change: trace 0: 2 + 2 + 2 + 3, trace 1: 2 + 2 + 2 (INC B, POP A, HLT).
    assert r["copy"]["one_step"] == {"byte_accuracy": (56 - 4 - 6 - 15) / 56,
                                     "state_accuracy": 0.0, "computed_accuracy": 0.0}
    # copy_fetch free running keeps S_0's values: trace 0 ends with ACC 1 instead of 5, 7, 7;
    # trace 1 has B 4 instead of 5 in S_2, S_3 and A 0 instead of 9 in S_3.
    assert r["copy_fetch"]["free"] == {"byte_accuracy": (56 - 3 - 3) / 56, "state_accuracy": 2 / 7,
                                       "computed_accuracy": 0.0}
    ops = r["by_opcode"]
    assert list(ops) == ["fetch", "INC", "POP", "LOADI", "ADD", "MOV"]  # then in opcode order
    assert [(o["states"], o["computed_bytes"]) for o in ops.values()] == \
        [(2, 0), (1, 1), (1, 1), (1, 1), (1, 1), (1, 0)]
    assert ops["MOV"]["copy_fetch"]["one_step"] == {  # MOV A A: nothing to compute
        "byte_accuracy": 1.0, "state_accuracy": 1.0, "computed_accuracy": None}
    assert ops["ADD"]["copy_fetch"]["one_step"]["state_accuracy"] == 0.0


def test_rule_baselines_match_an_independent_count(tmp_path):
    d = tmp_path / "random"
    d.mkdir()
    for seed in range(6):
        (d / f"t{seed}.bin").write_bytes(cpu.random_trace(seed, M, R, 1, 3))
    files = sorted(d.iterdir())
    r = sample.simulate(tiny(P=8, N=16), files, memory_size=M, num_registers=R)

    def one_step(rule):
        def run(f, trace, states):
            return [list(rule(bytes(trace[:M].tolist()), s)) for s in states[:-1].tolist()]
        return run

    def free(rule):
        def run(f, trace, states):
            out, s = [], states[0].tolist()
            for _ in states[1:]:
                s = rule(bytes(trace[:M].tolist()), s)
                out.append(list(s))
            return out
        return run

    for name, rule in (("copy", cpu.copy_rule), ("copy_fetch", cpu.fetch_rule)):
        assert r[name]["one_step"] == independent_counts(files, one_step(rule))
        assert r[name]["free"] == independent_counts(files, free(rule))


class RuleAsModel(nn.Module):
    """A stand-in for BGPT that answers with a rule: its forward pass's argmax at content byte c
    is byte c of rule(previous true state), its generation runs the rule from S_0."""

    def __init__(self, rule, P=8, N=16):
        super().__init__()
        self.config = BGPTConfig(patch_size=P, max_patches=N, **TINY)
        self.rule = rule
        self.dummy = nn.Parameter(torch.zeros(1))  # the device to run on

    def forward(self, x, mask=None):
        P = self.config.patch_size
        content = x[:, P:]  # (B, T - P)
        guess = torch.zeros_like(content)
        for b in range(len(x)):
            memory = bytes(content[b, :M].tolist())
            n = int((content[b] != EOP).sum())  # content bytes, without the batch's EOP padding
            for c in range(M + S, n - S + 1, S):
                state = self.rule(memory, content[b, c - S:c].tolist())
                guess[b, c:c + S] = torch.tensor(list(state))
        return F.one_hot(guess, VOCAB_SIZE).float(), None

    def generate(self, x, max_new_bytes, **kw):
        P = self.config.patch_size
        rows = []
        for row in x.tolist():
            memory, s, out = bytes(row[P:P + M]), row[P + M:P + M + S], []
            while len(out) < max_new_bytes:
                s = self.rule(memory, s)
                out += list(s)
            rows.append(out[:max_new_bytes])
        return torch.tensor(rows)


@pytest.mark.parametrize("rule, name", [(cpu.copy_rule, "copy"), (cpu.fetch_rule, "copy_fetch")])
def test_a_model_that_is_a_rule_scores_as_the_rule(toy_traces, rule, name):
    """Puts each model guess in the right column: off by one byte or one state, it would not."""
    r = sample.simulate(RuleAsModel(rule), toy_traces, memory_size=M, num_registers=R)
    assert r["model"] == r[name]
    assert all(o["model"] == o[name] for o in r["by_opcode"].values())


def test_a_model_that_stops_at_once_gets_nothing_right(toy_traces):
    """A free run that ends early (EOP) is wrong on every missing byte, zeros included."""
    model = RuleAsModel(cpu.copy_rule)
    model.generate = lambda x, max_new_bytes, **kw: torch.full((len(x), max_new_bytes), EOP)
    r = sample.simulate(model, toy_traces, memory_size=M, num_registers=R)
    assert r["model"]["free"] == {"byte_accuracy": 0.0, "state_accuracy": 0.0,
                                  "computed_accuracy": 0.0}


def test_model_figures_equal_a_hand_computation(toy_traces):
    """The tiny untrained model's one-step figures: each trace's own forward pass and argmax,
    counted with numpy; its free-running ones: each trace's own greedy generation."""
    model = tiny(P=8, N=16)
    r = sample.simulate(model, toy_traces, memory_size=M, num_registers=R)

    def one_step(f, trace, states):
        x = torch.tensor([encode(f.read_bytes(), "bin", 8)[:-8]])
        logits, _ = model(x)  # (1, T - P, V): column c predicts content byte c
        return logits[0].argmax(-1)[M + S:len(trace)].tolist()

    def free(f, trace, states):
        prompt = torch.tensor([encode(b"", "bin", 8)[:8] + trace[:M + S].tolist()])
        new = model.generate(prompt, len(trace) - M - S, top_k=1)[0].tolist()
        new = new[:new.index(EOP)] if EOP in new else new
        return (new + [-1] * len(trace))[:len(trace) - M - S]

    with torch.no_grad():
        expect_one = independent_counts(toy_traces, one_step)
        expect_free = independent_counts(toy_traces, free)
    assert r["model"]["one_step"] == expect_one and r["model"]["free"] == expect_free
    assert r["bytes_per_s"] > 0


def test_simulate_names_a_file_that_is_not_a_trace(toy_traces):
    toy_traces[0].write_bytes(toy_traces[0].read_bytes()[:-3])
    with pytest.raises(ValueError, match="cpu_0.bin"):
        sample.simulate(tiny(P=8, N=16), toy_traces, memory_size=M, num_registers=R)
    with pytest.raises(ValueError, match="cpu_1.bin: the trace needs"):
        sample.simulate(tiny(P=8, N=4), toy_traces[1:], memory_size=M, num_registers=R)


# ---------------------------------------------------------------------------------------------
# The command line


def save(path, model, classes=None):
    config = {"train": {"classify": classes is not None}, "model": asdict(model.config)}
    torch.save({"model": model.state_dict(), "config": config,
                "data": {"ext": "txt", "classes": classes}}, path)
    return str(path)


@pytest.fixture
def ckpts(tmp_path):
    cfg = BGPTConfig(patch_size=8, max_patches=16, **TINY)
    torch.manual_seed(0)
    return {"gen": save(tmp_path / "gen.pt", BGPT(cfg)),
            "clf": save(tmp_path / "clf.pt", BGPTClassifier(cfg, 2), ["a", "b"])}


def test_command_line_tasks(tmp_path, ckpts, toy_traces, capsys):
    prompt = tmp_path / "long.txt"
    prompt.write_bytes(b"all work and no play " * 50)  # 1050 bytes, a 128-byte context
    sample.main(["--ckpt", ckpts["gen"], "--prompt", str(prompt), "--max_new_bytes", "300",
                 "--out_dir", str(tmp_path / "s"), "--num_samples", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    # 120 ids beside the header: 10 of prompt (its last whole patch, then 2 bytes), 110 new
    assert "max_new_bytes: 110 instead of 300" in out
    sample.main(["--ckpt", ckpts["gen"], "--simulate", str(toy_traces[0].parent), "--memory_size",
                 str(M), "--num_registers", str(R), "--device", "cpu",
                 "--json", str(tmp_path / "sim.json")])
    out = capsys.readouterr().out
    assert "2 traces, 7 states" in out and "copy_fetch" in out and "MOV" in out
    figures = json.loads((tmp_path / "sim.json").read_text())  # what the table printed, kept
    assert figures["traces"] == 2 and figures["states"] == 7 and "MOV" in figures["by_opcode"]
    assert set(figures["model"]) == set(sample.MODES)
    (tmp_path / "c").mkdir()
    for name in ("a_1.txt", "b_2.txt", "c_3.txt"):
        (tmp_path / "c" / name).write_bytes(b"xyz")
    sample.main(["--ckpt", ckpts["clf"], "--classify", str(tmp_path / "c"), "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines[:3]] == ["a_1.txt", "b_2.txt", "c_3.txt"]
    assert lines[3].startswith("accuracy") and "on 2 files whose names carry" in lines[3]


def test_attention_flag_overrides_the_checkpoints_core(tmp_path):
    """A model trained with the flash kernel on a GPU samples on a CPU with --attention sdpa; and
    --attention flash where the kernel cannot run is one line, exit 2."""
    cfg = BGPTConfig(patch_size=8, max_patches=16, **{**TINY, "attention": "flash"})
    ckpt = save(tmp_path / "flash.pt", BGPT(cfg))
    model, _ = sample.load_model(ckpt, attention="sdpa")
    assert model.config.attention == "sdpa"
    assert {m.attention for m in model.modules() if hasattr(m, "attention")} == {"sdpa"}
    r = run("sample.py", "--ckpt", ckpt, "--attention", "flash", "--device", "cpu",
            "--num_samples", "1", "--out_dir", str(tmp_path / "s"),
            env={"TRITON_INTERPRET": "0"})
    assert r.returncode == 2 and "--attention flash" in r.stderr and "Traceback" not in r.stderr


def test_classify_returns_predictions(tmp_path, ckpts):
    model, info = sample.load_model(ckpts["clf"])
    (tmp_path / "c").mkdir()
    for name in ("a_1.txt", "b_2.txt", "c_3.txt"):
        (tmp_path / "c" / name).write_bytes(b"xyz")
    r = sample.classify(model, info["classes"], tmp_path / "c")
    assert [name for name, _ in r["predictions"]] == ["a_1.txt", "b_2.txt", "c_3.txt"]
    labels = [label for _, label in r["predictions"]]
    assert set(labels) <= {"a", "b"} and labels[0] == labels[1] == labels[2]  # same bytes
    assert r["accuracy"] == 0.5  # one of the two labelled files, whatever the label


@pytest.mark.parametrize("args, name", [
    (["--temperature", "-1"], "--temperature"), (["--top_p", "0"], "--top_p"),
    (["--top_p", "1.5"], "--top_p"), (["--top_k", "0"], "--top_k"),
    (["--num_samples", "0"], "--num_samples"), (["--max_new_bytes", "0"], "--max_new_bytes"),
    (["--max_new_bytes", "ten"], "--max_new_bytes"), (["--colour", "red"], "--colour"),
    (["--prompt", "MISSING"], "--prompt"), (["--convert", "MISSING", "--to", "mid"], "--convert"),
    (["--convert", "EMPTY", "--to", "mid"], "--convert"), (["--convert", "FULL"], "--to"),
    (["--to", "mid"], "--to"), (["--classify", "MISSING"], "--classify"),
    (["--classify", "EMPTY"], "--classify"), (["--simulate", "MISSING"], "--simulate"),
    (["--simulate", "EMPTY"], "--simulate"), (["--simulate", "FULL"], "--simulate"),  # no .bin
    (["--simulate", "BINS", "--memory_size", "10"], "memory_size"),
    (["--simulate", "BINS", "--memory_size", "16", "--num_registers", "3"], "cpu_0.bin"),
    (["--prompt", "FILE", "--simulate", "BINS"], "--prompt and --simulate"),
    (["--json", "x.json"], "--json"),  # figures of a simulation, without one
    (["--classify", "FULL"], "--classify"),  # a generative checkpoint
    (["--ckpt", "CLF"], "--ckpt"),  # a classifier without --classify
])
def test_bad_input_is_one_line(tmp_path, ckpts, toy_traces, capsys, args, name):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.abc").write_bytes(b"X:1")
    places = {"MISSING": tmp_path / "nope", "EMPTY": tmp_path / "empty",
              "FULL": tmp_path / "full", "FILE": tmp_path / "full" / "x.abc",
              "BINS": toy_traces[0].parent, "CLF": ckpts["clf"]}
    args = [str(places.get(a, a)) for a in args]
    if "--ckpt" not in args:
        args += ["--ckpt", ckpts["gen"]]
    with pytest.raises(SystemExit) as e:
        sample.main(args + ["--device", "cpu", "--out_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "error:" in err and name in err, err
