"""CPU-state traces: the "CPU simulation" data of bGPT (arXiv:2402.19155), in the released format.

A toy 8-bit machine runs a random program; its trace file is the memory (the program) followed by
the machine's state after every instruction fetch. A byte model trained on these files learns to
*execute* the program: given the memory and the initial state it must generate every later state.

    python data.py cpu --out data/cpu --count 1000 --seed 0     # 1000 train + 100 test traces
    python -c "import cpu; print(cpu.translate(open('data/cpu/train/cpu_000000.bin','rb').read()))"

Trace layout (release sizes): 1024 memory bytes, then 16-byte states `PC, ACC, IR[4], A..J`:
the initial one (PC 0, IR 0), then one per fetched instruction, the last one fetching HLT.
The two rules at the end (copy_rule, fetch_rule) are the baselines a model's simulation is scored
against. Pure Python + numpy; no torch.
"""
import os

import numpy as np
from tqdm import tqdm

# --- the machine ---------------------------------------------------------------------------------
OPCODE_NAMES = ("HLT", "CLR", "INC", "DEC", "SHL", "SHR", "ROL", "ROR", "NOT", "PUSH", "POP",
                "LOADI", "SWAP", "ADD", "SUB", "MUL", "DIV", "AND", "OR", "XOR", "MOV")
(HLT, CLR, INC, DEC, SHL, SHR, ROL, ROR, NOT, PUSH, POP,
 LOADI, SWAP, ADD, SUB, MUL, DIV, AND, OR, XOR, MOV) = range(len(OPCODE_NAMES))  # HLT 0 .. MOV 20

BYTE_MAX = 255            # every value is one byte; arithmetic saturates here instead of wrapping
INSTRUCTION_SIZE = 4      # `op a1 a2 a3`, one byte each
ACC_INDEX = 0             # operand 0 names the accumulator, 1..R name registers A..
MEMORY_SIZE = 1024        # bytes of memory in the release -> 256 instruction slots
NUM_REGISTERS = 10        # A..J in the release
STATE_SIZE = 16           # PC, ACC, IR[4], A..J = 1 + 1 + 4 + 10 bytes (one patch of 16!)
STATE_HEADER = 6          # PC, ACC, IR[4]: the state bytes before the registers
MIN_PROGRAM, MAX_PROGRAM = 1, 255  # random instructions per program (a final HLT is extra)
MAX_SLOTS = BYTE_MAX + 1  # PC is stored in one byte, so memory holds at most 256 instructions

# Unary ops act on operand a1: the accumulator when a1 = 0, else register a1.
UNARY = {
    CLR: lambda x: 0,
    INC: lambda x: min(x + 1, BYTE_MAX),
    DEC: lambda x: max(x - 1, 0),
    SHL: lambda x: (x << 1) & BYTE_MAX,           # top bit falls off
    SHR: lambda x: x >> 1,
    ROL: lambda x: ((x << 1) | (x >> 7)) & BYTE_MAX,  # top bit comes back in at the bottom
    ROR: lambda x: ((x >> 1) | (x << 7)) & BYTE_MAX,  # bottom bit comes back in at the top
    NOT: lambda x: ~x & BYTE_MAX,                 # Python's ~ gives a negative int: mask it
}
BINARY = {
    ADD: lambda x, y: min(x + y, BYTE_MAX),
    SUB: lambda x, y: max(x - y, 0),
    MUL: lambda x, y: min(x * y, BYTE_MAX),
    DIV: lambda x, y: x // y if y else BYTE_MAX,  # division by zero saturates too
    AND: lambda x, y: x & y,
    OR: lambda x, y: x | y,
    XOR: lambda x, y: x ^ y,
}
# How many operands each op may take; a random instruction picks one form uniformly.
FORMS = {**{op: (0, 1) for op in UNARY}, PUSH: (1,), POP: (1,), LOADI: (1,), SWAP: (1, 2),
         **{op: (1, 2, 3) for op in BINARY}, MOV: (2,)}


def operand_count(a1, a2, a3):
    # Register operands are 1..R, never 0, so the form is how many operand bytes are nonzero.
    return (a1 != 0) + (a2 != 0) + (a3 != 0)


def execute(instruction, v):
    """Run one instruction on `v` = [ACC, A, B, ...] in place. Keeping ACC at index 0 means
    operand 0 ("the accumulator") needs no special case: v[a1] is right either way."""
    op, a1, a2, a3 = instruction
    n = operand_count(a1, a2, a3)
    if op in UNARY:
        v[a1] = UNARY[op](v[a1])
    elif op == PUSH:                    # PUSH r: ACC = r
        v[ACC_INDEX] = v[a1]
    elif op == POP:                     # POP r: r = ACC
        v[a1] = v[ACC_INDEX]
    elif op == LOADI:                   # LOADI n: a1 is an immediate byte, not a register
        v[ACC_INDEX] = a1
    elif op == SWAP:                    # SWAP r: ACC <-> r;  SWAP r s: r <-> s
        r, s = (a1, a2) if n == 2 else (ACC_INDEX, a1)
        v[r], v[s] = v[s], v[r]
    elif op in BINARY:                  # r: ACC = ACC op r;  r s: r = r op s;  r s t: t = r op s
        forms = {1: (ACC_INDEX, a1, ACC_INDEX), 2: (a1, a2, a1), 3: (a1, a2, a3)}
        x, y, out = forms[max(n, 1)]    # (left input, right input, destination)
        v[out] = BINARY[op](v[x], v[y])
    elif op == MOV:                     # MOV r s: r = s
        v[a1] = v[a2]


def simulate(program, memory_size=MEMORY_SIZE, num_registers=NUM_REGISTERS, acc=0, registers=None,
             max_steps=None):
    """Run `program` and return its trace file bytes.

    program: a list of (op, a1, a2, a3) instructions, or raw memory bytes (e.g. the first
      memory_size bytes of a trace, to re-run it). It is placed from address 0; the rest is zero.
    acc, registers: the initial ACC and the num_registers initial register values (default 0).
    max_steps: most instructions to fetch. With no jumps each slot can be fetched once before PC
      sticks at the last slot; if that slot is not HLT the machine would re-run it forever, so we
      stop after memory_size/4 fetches by default. Programs from random_program always halt first.
    """
    if not isinstance(program, (bytes, bytearray)):
        program = bytes(b for instruction in program for b in instruction)
    if len(program) > memory_size or memory_size % INSTRUCTION_SIZE:
        raise ValueError(f"a {len(program)}-byte program does not fit {memory_size} bytes of "
                         "memory")
    memory = bytes(program) + bytes(memory_size - len(program))
    slots = memory_size // INSTRUCTION_SIZE
    v = [acc] + list(registers if registers is not None else [0] * num_registers)
    if len(v) != num_registers + 1 or not all(0 <= x <= BYTE_MAX for x in v):
        raise ValueError(f"need {num_registers} registers and ACC, all in 0..{BYTE_MAX}")
    pc, ir = 0, (0, 0, 0, 0)
    states = [bytes([pc, v[ACC_INDEX], *ir, *v[1:]])]  # the initial state: PC 0, IR 0
    for _ in range(slots if max_steps is None else max_steps):
        ir = tuple(memory[pc * INSTRUCTION_SIZE:(pc + 1) * INSTRUCTION_SIZE])  # fetch ...
        pc = min(pc + 1, slots - 1)                                            # ... and advance
        states.append(bytes([pc, v[ACC_INDEX], *ir, *v[1:]]))  # recorded *before* it executes
        if ir[0] == HLT:
            break
        op, *operands = ir
        registers_used = operands[1:] if op == LOADI else operands  # LOADI's a1 is an immediate
        if op > MOV or max(registers_used) > num_registers:
            raise ValueError(f"invalid instruction {ir} at slot {pc - 1}")
        execute(ir, v)
    return memory + b"".join(states)


# --- random programs -----------------------------------------------------------------------------
def random_program(rng, min_len=MIN_PROGRAM, max_len=MAX_PROGRAM, num_registers=NUM_REGISTERS):
    """min_len..max_len (uniform) random instructions, then one HLT.

    The paper's "length uniform in 1..255 with a final HLT" is read as 1..255 random instructions
    *plus* the HLT: at most 256 = 1024/4 instructions, filling the release memory exactly, and a
    mean trace of 1024 + 16*(128 + 1 + 1) = 3104 bytes, matching the released mean of 3103."""
    rng = np.random.default_rng(rng)
    program = []
    for _ in range(int(rng.integers(min_len, max_len + 1))):
        op = int(rng.integers(CLR, MOV + 1))  # uniform over the 20 ops that are not HLT
        forms = FORMS[op]
        n = forms[int(rng.integers(len(forms)))]
        if op == LOADI:
            operands = [int(rng.integers(0, BYTE_MAX + 1))]
        else:
            operands = [int(r) for r in rng.integers(1, num_registers + 1, size=n)]
        program.append((op, *operands, *[0] * (3 - len(operands))))
    program.append((HLT, 0, 0, 0))
    return program


def random_trace(rng, memory_size=MEMORY_SIZE, num_registers=NUM_REGISTERS,
                 min_program=MIN_PROGRAM, max_program=MAX_PROGRAM):
    """The trace of one random program from a random initial ACC and registers (0..255 each)."""
    rng = np.random.default_rng(rng)  # accepts a seed or passes a Generator through unchanged
    program = random_program(rng, min_program, max_program, num_registers)
    acc, *registers = (int(x) for x in rng.integers(0, BYTE_MAX + 1, size=1 + num_registers))
    return simulate(program, memory_size, num_registers, acc, registers)


# --- reading traces ------------------------------------------------------------------------------
def parse_trace(trace, memory_size=MEMORY_SIZE, num_registers=NUM_REGISTERS):
    """Split a trace into (memory bytes, list of state tuples). Trailing bytes that do not make a
    whole state (a model's output cut short) are left out; translate() reports them."""
    state_size = STATE_HEADER + num_registers
    body = trace[memory_size:]
    whole = len(body) - len(body) % state_size
    states = [tuple(body[i:i + state_size]) for i in range(0, whole, state_size)]
    return trace[:memory_size], states


def register_name(r):
    return chr(ord("A") + r - 1) if 1 <= r <= 26 else f"R{r}"


def disassemble(instruction):
    """(13, 2, 3, 0) -> 'ADD B C'; (11, 17, 0, 0) -> 'LOADI 17'; (2, 0, 0, 0) -> 'INC' (on ACC)."""
    op, a1, a2, a3 = instruction
    if op >= len(OPCODE_NAMES):
        return f"?{op} {a1} {a2} {a3}"
    if op == LOADI:
        return f"LOADI {a1}"
    return " ".join([OPCODE_NAMES[op]] + [register_name(a) for a in (a1, a2, a3) if a])


def translate(trace, memory_size=MEMORY_SIZE, num_registers=NUM_REGISTERS):
    """A readable listing of a trace: the program as assembly, then one row per state."""
    memory, states = parse_trace(trace, memory_size, num_registers)
    lines = ["program:"]
    for slot in range(memory_size // INSTRUCTION_SIZE):
        instruction = tuple(memory[slot * INSTRUCTION_SIZE:(slot + 1) * INSTRUCTION_SIZE])
        lines.append(f"  {slot:03d}: {disassemble(instruction)}")
        if instruction[0] == HLT:  # the rest of memory is zero (more HLTs): stop listing
            break
    registers = " ".join(f"{register_name(r):>3}" for r in range(1, num_registers + 1))
    lines += ["states:", f"  step  PC ACC  {'IR':<12} {registers}"]
    for step, (pc, acc, *rest) in enumerate(states):
        ir, values = rest[:INSTRUCTION_SIZE], rest[INSTRUCTION_SIZE:]
        cells = " ".join(f"{x:>3}" for x in values)
        lines.append(f"  {step:4d} {pc:3d} {acc:3d}  {disassemble(ir):<12} {cells}")
    leftover = (len(trace) - memory_size) - len(states) * (STATE_HEADER + num_registers)
    if leftover > 0:
        lines.append(f"  ({leftover} trailing bytes, not a whole state)")
    return "\n".join(lines)


# --- writing a data set --------------------------------------------------------------------------
def size_error(memory_size, num_registers, min_program, max_program):
    """Why these sizes cannot make traces, or None. Shared by the CLI and write_cpu_dataset."""
    slots = memory_size // INSTRUCTION_SIZE
    if memory_size % INSTRUCTION_SIZE or not 2 <= slots <= MAX_SLOTS:
        most = MAX_SLOTS * INSTRUCTION_SIZE
        return f"memory_size must be a multiple of 4 in 8..{most} (PC is one byte)"
    if not 1 <= num_registers <= BYTE_MAX:
        return f"num_registers must be in 1..{BYTE_MAX} (operands are bytes, 0 is ACC)"
    if not 1 <= min_program <= max_program <= slots - 1:
        return (f"need 1 <= min_program <= max_program <= memory_size/4 - 1 = {slots - 1}"
                " (one slot is kept for the final HLT)")
    return None


def write_cpu_dataset(out_dir, count, seed=0, test_count=None, memory_size=MEMORY_SIZE,
                      num_registers=NUM_REGISTERS, min_program=MIN_PROGRAM,
                      max_program=MAX_PROGRAM, progress=True):
    """Write `count` traces to out_dir/train and `test_count` (default max(1, count // 10)) more
    to out_dir/test, as cpu_000000.bin, ... Returns (train_paths, test_paths).

    Trace i of a split gets its own generator seeded with (seed, split, i): the files do not
    depend on `count`, the two splits never share a random stream, and a rerun gives the same
    bytes."""
    error = size_error(memory_size, num_registers, min_program, max_program)
    if error:
        raise ValueError(error)
    test_count = max(1, count // 10) if test_count is None else test_count
    splits = [("train", count), ("test", test_count)]
    paths = {name: [] for name, _ in splits}
    bar = tqdm(total=count + test_count, desc="cpu traces", unit="file", disable=not progress)
    for split_id, (name, n) in enumerate(splits):
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, split_id, i])
            path = os.path.join(out_dir, name, f"cpu_{i:06d}.bin")
            with open(path, "wb") as f:
                f.write(random_trace(rng, memory_size, num_registers, min_program, max_program))
            paths[name].append(path)
            bar.update()
    bar.close()
    return paths["train"], paths["test"]


# --- rule baselines ------------------------------------------------------------------------------
# What a model that never learned to execute could still get right. Each rule maps the memory and
# one state (bytes or a tuple) to the next state; run one step from the true previous state, or
# free running from its own previous output. Most bytes of a state repeat the previous state, so
# byte accuracy alone flatters any model: these rules say how much of it needs no execution.
def copy_rule(memory, state):
    """The next state is the previous one, byte for byte: right wherever nothing changed."""
    return bytes(state)


def fetch_rule(memory, state):
    """Copy ACC and the registers, advance PC and fetch the instruction it pointed at: all a step
    does but execute. From a true state it is wrong on exactly the bytes that executing the
    instruction in state's IR changed, so it is right whenever that instruction changes nothing
    (S_0's empty IR, which reads as HLT; `MOV A A`; `CLR` of a register already 0)."""
    slots = len(memory) // INSTRUCTION_SIZE
    pc = state[0]
    ir = memory[pc * INSTRUCTION_SIZE:(pc + 1) * INSTRUCTION_SIZE]
    return bytes([min(pc + 1, slots - 1), state[1], *ir, *state[STATE_HEADER:]])
