"""Every command the documentation shows works as written, as far as can be checked without
running it: each `python train.py ...`, `python sample.py ...`, `python data.py ...` and
`python bench.py ...` in README.md, RESULTS.md and the module docstrings of the top-level .py
files (torchrun's train.py included) goes through that script's own argument parser (every flag
exists, every value parses), and every data path it reads is one that something writes: a builder
(builders.py), a notebook's split of a builder's folder, the default run (the quick start's
`python train.py` writes out/), the one-command download of a released checkpoint, or an earlier
command of the same block.

A capitalised placeholder (CKPT, DIR, IN, OUT, FILE) or a shell variable skips the path check, and
only it. A trailing `...` means "and more flags" and is dropped. Commands are read, never run.
"""

import ast
import re
import shlex
from pathlib import Path

import pytest

import bench
import builders
import data
import sample
import train

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "RESULTS.md"]
DOCSTRINGS = sorted(p.name for p in ROOT.glob("*.py"))  # train, sample, data, bench, builders, ...
SCRIPTS = ("train.py", "sample.py", "data.py", "bench.py")

# --- what exists without a command in the block -----------------------------------------------
# Each builder writes <root>/<name>/{train,test} (root "data" unless --root says otherwise).
BUILT = {f"{builders.DEFAULT_ROOT}/{name}/{split}"
         for name in builders.BUILDERS for split in builders.SPLITS}
# The splits the notebooks carve out of a builder's folder: 03 digits fit/val, 04 spoken digits
# fit/val and the samples of val and test it scores, 06 data/cpu_<programs>/{train,test} (via
# data.py's writer, cpu.write_cpu_dataset).
NOTEBOOK_SPLITS = {"data/digits/fit", "data/digits/val", "data/spoken-digits/fit",
                   "data/spoken-digits/val", "data/spoken-digits/val-sample",
                   "data/spoken-digits/test-sample"}
NOTEBOOK_CPU = re.compile(r"data/cpu_\d+/(train|test)")
# The quick start's `python train.py` writes the default out_dir; the released checkpoints are
# fetched one file at a time under their own names (README, "The released checkpoints").
DEFAULT_RUN = train.TrainConfig().out_dir
RELEASED = {f"weights-{kind}.pth" for kind in ("text", "image", "audio", "cpu", "conversion")}
KNOWN = BUILT | NOTEBOOK_SPLITS | {DEFAULT_RUN} | RELEASED


# --- reading the commands ---------------------------------------------------------------------
def markdown_blocks(text):
    """Every fenced block as a list of (line number, line), then each inline `code span` that
    holds a script command as a block of its own."""
    blocks, inside, lines, prose = [], False, [], []
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if inside:
                blocks.append(lines)
            inside, lines = not inside, []
        elif inside:
            lines.append((n, line))
        else:
            prose.append((n, line))
    for n, line in prose:
        for span in re.findall(r"`([^`]+)`", line):
            if re.search(r"\b(python3?|torchrun)\b.*\b(train|sample|data|bench)\.py\b", span):
                blocks.append([(n, span)])
    return blocks


def docstring_block(path):
    """The module docstring's command lines, as one block (numbered as in the file)."""
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree, clean=False) or ""
    first = tree.body[0].lineno if doc else 1
    return [[(first + i, line) for i, line in enumerate(doc.splitlines())
             if re.match(r"\s*([A-Z_]+=\S+\s+)*(python3?|torchrun)\s", line)]]


def commands(lines):
    """The simple commands of a block, as (line number, words): continuation lines joined,
    comments dropped, split at &&, ||, ; and |."""
    logical, buf, first = [], "", None
    for n, line in lines:
        first = first or n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
        else:
            logical.append((first, buf + line))
            buf, first = "", None
    if buf:
        logical.append((first, buf))
    out = []
    for n, line in logical:
        if not re.match(r"\s*([A-Za-z_]+=\S+\s+)*(python3?|torchrun|mkdir|cp|mv|wget|\S+=\$)\s",
                        line + " "):
            continue  # printed output, a table, Python: no command
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split, lex.commenters = True, "#"
        words = []
        for word in lex:
            if word in ("&&", "||", ";", "|", ");", "&"):
                out.append((n, words))
                words = []
            else:
                words.append(word)
        out.append((n, words))
    return [(n, w) for n, w in out if w]


def script_call(words):
    """(script, argv) for `[VAR=x ...] python SCRIPT ...` or `torchrun ... train.py ...`."""
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
        words = words[1:]
    if len(words) >= 2 and words[0] in ("python", "python3") and words[1] in SCRIPTS:
        script, argv = words[1], words[2:]
    elif words and words[0] == "torchrun" and "train.py" in words:
        script, argv = "train.py", words[words.index("train.py") + 1:]
    else:
        return None
    while argv and argv[-1] == "...":
        argv = argv[:-1]
    return script, argv


def collect():
    cases = []
    sources = [(name, markdown_blocks((ROOT / name).read_text()))
               for name in DOCS if (ROOT / name).exists()]
    sources += [(name, docstring_block(ROOT / name)) for name in DOCSTRINGS]
    for name, blocks in sources:
        for lines in blocks:
            block = commands(lines)
            for i, (line, words) in enumerate(block):
                call = script_call(words)
                if call:
                    earlier = [w for _, w in block[:i]]
                    where = f"{name}:{line}: {shlex.join(words)}"
                    cases.append(pytest.param(*call, earlier, id=where))
    return cases


CASES = collect()


# --- parsing and paths ------------------------------------------------------------------------
def parse(script, argv):
    """The script's own parser on argv: a Namespace-like dict of every flag's value."""
    if script == "train.py":
        cfg, model_fields, _ = train.parse_args(argv)
        return {**vars(cfg), **model_fields}
    if script == "sample.py":
        return vars(sample.build_parser().parse_args(argv))
    if script == "data.py":
        return vars(data.build_parser().parse_args(argv))
    return vars(bench.parse_args(argv))


def reads_and_writes(script, args):
    """The paths a command reads (which must exist) and writes (for the commands after it)."""
    reads, writes = [], []
    if script == "train.py":
        reads += [args["train_dir"], args["eval_dir"], args["init_from"]]
        if args["resume"]:
            reads.append(args["out_dir"])
        out = args["out_dir"]
        writes += [out, f"{out}/ckpt.pt", f"{out}/log.jsonl"]
    elif script == "sample.py":
        reads += [args["ckpt"], args["prompt"], args["convert"], args["classify"],
                  args["simulate"], args.get("compress", ""), args.get("decompress", "")]
        writes += [args["out_dir"], args.get("output", "")]
    elif script == "data.py":
        if args["command"] == "cpu":
            writes += [args["out"], f"{args['out']}/train", f"{args['out']}/test"]
        elif args["command"] == "tune":  # "stdlib": the default run's files, always there
            reads.append(args["dir"] if args["dir"] != "stdlib" else "")
        else:
            reads.append(args["file"])
    elif args.get("json"):
        writes.append(args["json"])
    return [p for p in reads if p], [p for p in writes if p]


def other_writes(words):
    """Paths written by the non-script commands of a block: mkdir, cp and mv, a download, a
    builder (writes <root>/<name>/{train,test}), data.py's cpu command."""
    words = [w for w in words if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", w)]
    if not words:
        return []
    if words[0] == "mkdir":
        return [w for w in words[1:] if not w.startswith("-")]
    if words[0] in ("cp", "mv") and len(words) > 2:
        return [words[-1]]
    if words[0] == "wget":
        return [words[-1].rsplit("/", 1)[-1]]
    if words[:2] in (["python", "builders.py"], ["python3", "builders.py"]):
        name = words[2]
        root = words[words.index("--root") + 1] if "--root" in words else builders.DEFAULT_ROOT
        return [f"{root}/{name}/{split}" for split in builders.SPLITS]
    call = script_call(words)
    if call:
        try:
            return reads_and_writes(call[0], parse(*call))[1]
        except SystemExit:
            return []  # its own case reports it
    return []


def clean(path):
    path = path.removeprefix("official:").removeprefix("./")
    return path.rstrip("/") or path


def placeholder(path):
    return "$" in path or any(re.fullmatch(r"[A-Z][A-Z0-9_]*", part)
                              for part in re.split(r"[/:.]", path) if part)


def written(path, known):
    return (path in known or NOTEBOOK_CPU.fullmatch(path) is not None
            or any(path.startswith(k + "/") for k in known))


@pytest.mark.parametrize("script,argv,earlier", CASES)
def test_a_documented_command_parses_and_reads_what_exists(script, argv, earlier, capsys):
    if "-h" in argv or "--help" in argv:
        return  # prints the help and exits 0: nothing to parse
    try:
        args = parse(script, argv)
    except SystemExit as e:
        pytest.fail(f"{script} rejects {argv}: {capsys.readouterr().err.strip()} (exit {e.code})")
    known = set(KNOWN)
    for words in earlier:
        known |= {clean(p) for p in other_writes(words)}
    reads, _ = reads_and_writes(script, args)
    missing = [p for p in map(clean, reads) if not placeholder(p) and not written(p, known)]
    assert not missing, f"nothing writes {missing} (no builder, notebook split or earlier command)"


def test_commands_are_found():
    # The reader works: the quick start and each docstring's examples are seen.
    ids = [c.id for c in CASES]
    for name in SCRIPTS:
        assert any(i.startswith(f"{name}:") for i in ids), name
    assert any(i.startswith("README.md:") and i.endswith(": python train.py") for i in ids)


def test_the_readme_test_command_is_what_ci_runs():
    # The quick start's second command ends with the very test command .ci/run runs.
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.startswith("#")][-1]
    quick = next(line for line in (ROOT / "README.md").read_text().splitlines()
                 if "requirements-dev.txt" in line and "pytest" in line)
    assert quick.split("&&")[-1].strip() == ci
