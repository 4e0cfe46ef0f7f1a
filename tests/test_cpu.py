"""Tests for cpu.py: every opcode and operand form by hand, the trace layout byte by byte, the
random generator, the two rule baselines and the command line that writes traces
(python data.py cpu). Run: python -m pytest tests/test_cpu.py -q"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
import cpu  # noqa: E402
import data  # noqa: E402
from cpu import (ADD, AND, CLR, DEC, DIV, HLT, INC, LOADI, MOV, MUL, NOT, OR, POP,  # noqa: E402
                 PUSH, ROL, ROR, SHL, SHR, SUB, SWAP, XOR)

A, B, C, D = 1, 2, 3, 4  # register operands


def run(instructions, acc=0, registers=(0, 0, 0, 0)):
    """Execute `instructions` then HLT on a 4-register machine; return the final (ACC, [A..D])
    read from the trace's last state, so these tests also go through the real trace path."""
    program = [tuple(i) + (0,) * (4 - len(i)) for i in instructions] + [(HLT, 0, 0, 0)]
    trace = cpu.simulate(program, 64, 4, acc, list(registers))
    _, states = cpu.parse_trace(trace, 64, 4)
    pc, final_acc, *rest = states[-1]
    return final_acc, list(rest[4:])


def test_opcode_numbers_match_paper():
    named = (cpu.HLT, cpu.CLR, cpu.NOT, cpu.PUSH, cpu.LOADI, cpu.SWAP, cpu.ADD, cpu.XOR, cpu.MOV)
    assert named == (0, 1, 8, 9, 11, 12, 13, 19, 20)
    assert cpu.OPCODE_NAMES[cpu.MOV] == "MOV" and len(cpu.OPCODE_NAMES) == 21


@pytest.mark.parametrize("op, x, expected", [
    (CLR, 77, 0),
    (INC, 7, 8), (INC, 255, 255),                 # INC caps at 255
    (DEC, 7, 6), (DEC, 0, 0),                     # DEC floors at 0
    (SHL, 0b10000001, 0b00000010), (SHR, 0b10000001, 0b01000000),
    (ROL, 0b10000001, 0b00000011), (ROR, 0b10000001, 0b11000000),
    (NOT, 0b10000001, 0b01111110), (NOT, 0, 255),
])
def test_unary_on_acc_and_on_register(op, x, expected):
    assert run([(op,)], acc=x, registers=(1, 2, 3, 4)) == (expected, [1, 2, 3, 4])        # a1 = 0
    assert run([(op, C)], acc=9, registers=(1, 2, x, 4)) == (9, [1, 2, expected, 4])      # a1 = C


@pytest.mark.parametrize("op, x, y, expected", [
    (ADD, 100, 55, 155), (ADD, 200, 100, 255),    # ADD caps at 255
    (SUB, 100, 55, 45), (SUB, 55, 100, 0),        # SUB floors at 0
    (MUL, 12, 11, 132), (MUL, 16, 16, 255),       # MUL caps at 255
    (DIV, 7, 2, 3), (DIV, 200, 0, 255),           # integer division; / 0 gives 255
    (AND, 0b1100, 0b1010, 0b1000), (OR, 0b1100, 0b1010, 0b1110), (XOR, 0b1100, 0b1010, 0b0110),
])
def test_binary_all_three_forms(op, x, y, expected):
    assert run([(op, B)], acc=x, registers=(0, y, 0, 0)) == (expected, [0, y, 0, 0])  # ACC op= B
    assert run([(op, B, C)], acc=9, registers=(0, x, y, 0)) == (9, [0, expected, y, 0])  # B op= C
    d = run([(op, B, C, D)], acc=9, registers=(0, x, y, 5))  # D = B op C
    assert d == (9, [0, x, y, expected])


def test_binary_same_register_twice():
    assert run([(ADD, A, A, B)], registers=(100, 0, 0, 0)) == (0, [100, 200, 0, 0])


def test_moves():
    assert run([(PUSH, C)], acc=1, registers=(5, 6, 7, 8)) == (7, [5, 6, 7, 8])     # ACC = C
    assert run([(POP, C)], acc=1, registers=(5, 6, 7, 8)) == (1, [5, 6, 1, 8])      # C = ACC
    assert run([(LOADI, 0)], acc=1, registers=(5, 6, 7, 8)) == (0, [5, 6, 7, 8])    # immediate 0
    assert run([(LOADI, 200)], acc=1, registers=(5, 6, 7, 8)) == (200, [5, 6, 7, 8])
    assert run([(SWAP, B)], acc=1, registers=(5, 6, 7, 8)) == (6, [5, 1, 7, 8])     # ACC <-> B
    assert run([(SWAP, B, D)], acc=1, registers=(5, 6, 7, 8)) == (1, [5, 8, 7, 6])  # B <-> D
    assert run([(MOV, A, D)], acc=1, registers=(5, 6, 7, 8)) == (1, [8, 6, 7, 8])   # A = D


def test_a_short_program_runs_in_order():
    program = [(LOADI, 10), (POP, A), (INC, A), (MUL, A, A, B), (SUB, B, A), (PUSH, B)]
    # ACC=10, A=10, A=11, B=121, B=110, ACC=110
    assert run(program) == (110, [11, 110, 0, 0])


def test_trace_bytes_by_hand():
    # 16 bytes of memory (4 slots), 2 registers -> 8-byte states: PC, ACC, IR[4], A, B.
    program = [(LOADI, 5, 0, 0), (ADD, 1, 0, 0), (HLT, 0, 0, 0)]
    expected = bytes([
        11, 5, 0, 0,  13, 1, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,   # memory: program, rest zero
        0, 1, 0, 0, 0, 0, 2, 3,      # initial state: PC 0, ACC 1, IR 0, A 2, B 3
        1, 1, 11, 5, 0, 0, 2, 3,     # fetched LOADI 5: PC already 1, ACC not yet changed
        2, 5, 13, 1, 0, 0, 2, 3,     # fetched ADD A: LOADI has run (ACC 5)
        3, 7, 0, 0, 0, 0, 2, 3,      # fetched HLT: ADD has run (ACC 7); recorded, then stop
    ])
    assert cpu.simulate(program, 16, 2, acc=1, registers=[2, 3]) == expected


def test_release_layout():
    program = [(INC,), (DEC, 3), (ADD, 1, 2, 3)]
    program = [i + (0,) * (4 - len(i)) for i in program] + [(HLT, 0, 0, 0)]
    trace = cpu.simulate(program, acc=3, registers=list(range(10, 20)))
    assert len(trace) == cpu.MEMORY_SIZE + cpu.STATE_SIZE * (4 + 1)  # 4 fetched + initial
    assert trace[:16] == bytes([2, 0, 0, 0, 3, 3, 0, 0, 13, 1, 2, 3, 0, 0, 0, 0])
    assert not any(trace[16:cpu.MEMORY_SIZE])
    memory, states = cpu.parse_trace(trace)
    assert states[0] == (0, 3, 0, 0, 0, 0) + tuple(range(10, 20))
    assert [s[0] for s in states] == [0, 1, 2, 3, 4]
    assert [s[2:6] for s in states[1:]] == [tuple(i) for i in program]
    assert states[-1][2] == HLT


def test_pc_caps_at_last_slot_and_always_stops():
    # 8 bytes = 2 slots: fetching slot 1 leaves PC at 1 (the cap), not 2.
    trace = cpu.simulate([(INC, 0, 0, 0), (HLT, 0, 0, 0)], 8, 2)
    assert [s[0] for s in cpu.parse_trace(trace, 8, 2)[1]] == [0, 1, 1]
    # No HLT anywhere: PC sticks on the last slot; the max-steps guard ends the trace anyway.
    trace = cpu.simulate([(INC, 0, 0, 0), (INC, 0, 0, 0)], 8, 2)
    assert len(trace) == 8 + 8 * 3
    trace = cpu.simulate([(INC, 0, 0, 0), (INC, 0, 0, 0)], 8, 2, max_steps=5)
    pc_acc = [s[:2] for s in cpu.parse_trace(trace, 8, 2)[1]]
    assert pc_acc == [(0, 0), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4)]


def test_invalid_programs_are_rejected():
    with pytest.raises(ValueError):
        cpu.simulate([(ADD, 11, 0, 0), (HLT, 0, 0, 0)], 16, 10)   # no register K
    with pytest.raises(ValueError):
        cpu.simulate([(21, 0, 0, 0)], 16, 2)                     # no opcode 21
    with pytest.raises(ValueError):
        cpu.simulate([(HLT, 0, 0, 0)] * 5, 16, 2)                # does not fit
    cpu.simulate([(LOADI, 255, 0, 0), (HLT, 0, 0, 0)], 16, 2)    # an immediate is not a register


def test_random_programs_use_only_valid_forms():
    rng = np.random.default_rng(0)
    counts = {op: set() for op in cpu.FORMS}
    for _ in range(200):
        program = cpu.random_program(rng, 1, 30, num_registers=10)
        assert 2 <= len(program) <= 31 and program[-1] == (HLT, 0, 0, 0)
        for op, a1, a2, a3 in program[:-1]:
            assert op != HLT
            if op == LOADI:
                assert 0 <= a1 <= 255 and a2 == a3 == 0
                continue
            n = cpu.operand_count(a1, a2, a3)
            assert n in cpu.FORMS[op]
            assert all(1 <= a <= 10 for a in (a1, a2, a3)[:n]) and not any((a1, a2, a3)[n:])
            counts[op].add(n)
    assert all(counts[op] == set(cpu.FORMS[op]) for op in counts if op != LOADI)  # every form


def test_random_traces_are_deterministic_and_halt():
    a = [cpu.random_trace(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1] and a[0] != cpu.random_trace(np.random.default_rng(8))
    for seed in range(20):
        trace = cpu.random_trace(seed, 64, 3, 1, 15)
        memory, states = cpu.parse_trace(trace, 64, 3)
        assert (len(trace) - 64) % 9 == 0 and states[-1][2] == HLT
        assert sum(s[2] == HLT for s in states[1:]) == 1  # the only HLT fetched is the last state
    full = cpu.random_trace(3, min_program=255, max_program=255)
    assert len(full) == 1024 + 16 * 257                     # 255 + HLT fills all 256 slots


def test_translate():
    trace = cpu.simulate([(ADD, 2, 3, 0), (LOADI, 17, 0, 0), (INC, 0, 0, 0), (HLT, 0, 0, 0)],
                         64, 3, acc=1, registers=[2, 3, 4])
    text = cpu.translate(trace, 64, 3)
    assert "000: ADD B C" in text and "001: LOADI 17" in text and "002: INC" in text
    assert "003: HLT" in text and "004:" not in text
    assert len(text.splitlines()) == 1 + 4 + 2 + 5
    assert "(3 trailing bytes" in cpu.translate(trace + b"abc", 64, 3)


def test_rules_on_a_hand_made_trace():
    # 16 bytes of memory (4 slots), registers A B: 8-byte states PC, ACC, IR[4], A, B.
    program = [(LOADI, 5, 0, 0), (ADD, A, 0, 0), (MOV, A, A, 0), (HLT, 0, 0, 0)]
    memory, states = cpu.parse_trace(cpu.simulate(program, 16, 2, acc=1, registers=[2, 3]), 16, 2)
    assert states == [(0, 1, 0, 0, 0, 0, 2, 3),      # initial: nothing fetched yet
                      (1, 1, 11, 5, 0, 0, 2, 3),     # fetched LOADI 5
                      (2, 5, 13, 1, 0, 0, 2, 3),     # LOADI ran (ACC 5), fetched ADD A
                      (3, 7, 20, 1, 1, 0, 2, 3),     # ADD A ran (ACC 5 + 2), fetched MOV A A
                      (3, 7, 0, 0, 0, 0, 2, 3)]      # MOV A A did nothing, fetched HLT (PC capped)
    fetch = [cpu.fetch_rule(memory, s) for s in states[:-1]]
    assert fetch[0] == bytes(states[1])  # the initial IR executes nothing
    assert fetch[1] == bytes([2, 1, 13, 1, 0, 0, 2, 3])  # all but ACC, which LOADI computed
    assert fetch[2] == bytes([3, 5, 20, 1, 1, 0, 2, 3])  # all but ACC, which ADD computed
    assert fetch[3] == bytes(states[4])  # MOV A A computes nothing
    assert cpu.fetch_rule(memory, states[4]) == bytes(states[4])  # HLT on the last slot: fixed
    assert [cpu.copy_rule(memory, s) for s in states] == [bytes(s) for s in states]
    wrong = [[j for j in range(8) if fetch[k][j] != states[k + 1][j]] for k in range(4)]
    assert wrong == [[], [1], [1], []]


def test_fetch_rule_misses_exactly_what_execution_changes():
    """On random traces, fetch_rule from the true previous state gets PC and IR right always, and
    a value byte (ACC, registers) wrong exactly when executing the previous IR changed it."""
    R, M = 4, 64
    S = cpu.STATE_HEADER + R
    positions = [1, *range(cpu.STATE_HEADER, S)]  # where ACC, A, B, ... sit in a state
    for seed in range(30):
        memory, states = cpu.parse_trace(cpu.random_trace(seed, M, R, 1, 15), M, R)
        for prev, true in zip(states, states[1:]):
            guess = cpu.fetch_rule(memory, prev)
            before = [prev[j] for j in positions]
            after = list(before)
            cpu.execute(prev[2:6], after)  # what the instruction in IR does (S_0's HLT: nothing)
            changed = [j for j, b, a in zip(positions, before, after) if b != a]
            assert [j for j in range(S) if guess[j] != true[j]] == changed


def test_cli_writes_train_and_test(tmp_path, capsys):
    args = ["cpu", "--out", str(tmp_path), "--count", "3", "--seed", "1", "--memory_size", "64",
            "--num_registers", "4", "--max_program", "10"]
    assert data.main(args) == 0
    assert "wrote 3 train and 1 test traces" in capsys.readouterr().out
    train = sorted(os.listdir(tmp_path / "train"))
    assert train == ["cpu_000000.bin", "cpu_000001.bin", "cpu_000002.bin"]
    assert os.listdir(tmp_path / "test") == ["cpu_000000.bin"]  # max(1, 3 // 10)
    first = (tmp_path / "train" / "cpu_000000.bin").read_bytes()
    assert first == cpu.random_trace(np.random.default_rng([1, 0, 0]), 64, 4, 1, 10)
    assert first != (tmp_path / "test" / "cpu_000000.bin").read_bytes()
    data.main(args + ["--out", str(tmp_path / "again"), "--count", "5", "--test_count", "0"])
    assert (tmp_path / "again" / "train" / "cpu_000000.bin").read_bytes() == first  # same seed
    assert os.listdir(tmp_path / "again" / "test") == []


@pytest.mark.parametrize("bad, name", [
    (["--memory_size", "1022"], "memory_size"), (["--memory_size", "2048"], "memory_size"),
    (["--max_program", "256"], "max_program"), (["--min_program", "0"], "min_program"),
    (["--num_registers", "0"], "num_registers"), (["--count", "0"], "--count"),
    (["--count", "-3"], "--count"), (["--test_count", "-1"], "--test_count"),
    (["--count", "many"], "--count"), (["--colour", "red"], "--colour"),
    (["--out", "FILE"], "--out"),
])
def test_cli_rejects_bad_values_in_one_line(tmp_path, bad, name, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    bad = [str(tmp_path / "a_file") if b == "FILE" else b for b in bad]
    with pytest.raises(SystemExit) as e:
        data.main(["cpu", "--out", str(tmp_path / "out"), "--count", "2"] + bad)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "error:" in err and name in err, err
    assert not (tmp_path / "out").exists()
