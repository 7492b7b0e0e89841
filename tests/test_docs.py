"""The documentation cannot rot: the site builds in strict mode, and every code block of README.md and
docs/ runs.

Fenced blocks by language:

- ```python runs as a script (``python block.py``) in a fresh temporary directory;
- ```bash runs in bash, in a temporary directory that mirrors the repository root (symlinks), so
  that ``./run.sh``, ``examples/`` and ``.venv/`` are where the pages say and whatever a command
  writes (``runs/``, plots, JSON) lands in the temporary directory. The docs pages say their
  commands assume the activated venv: a block that does not activate it or call ``.venv/bin/...``
  itself gets ``source .venv/bin/activate`` first, and no block finds ``.venv/bin`` on the PATH
  otherwise, so the README's "after ./run.sh" commands are tested as a fresh shell runs them;
- ```text is output, shown not run: collected and skipped, with the reason in the test id.

Commands that would take minutes run at a smaller size, never a different command: :data:`CHEAP`
below is the whole list of reductions (fewer epochs, seeds, trials, rounds, steps). A block
preceded by ``<!-- docs-test: skip: REASON -->`` is skipped with that reason (installing
packages, or ./test.sh, which is this suite); ``<!-- docs-test: continue -->`` runs a python block
after the previous python block of its page.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
VENV = ROOT / ".venv"
# Seconds per python block and per command of a bash block. Reduced, a command takes seconds on an
# idle machine; the margin is for a machine shared with other jobs (measured: 20x slower at load 20).
TIMEOUT = 600

FENCE = re.compile(
    r"^(?:<!-- docs-test: (?P<directive>[^\n]*?) -->\n)?```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$",
    re.M | re.S,
)
# Output the pages show, and the languages a block may have.
OUTPUT_LANGUAGES = {"text"}
RUN_LANGUAGES = {"python", "bash"}


@dataclasses.dataclass
class Block:
    page: str  # relative to the repository root
    line: int
    lang: str
    body: str
    directive: str | None
    previous_python: Block | None  # the page's python block before this one

    @property
    def skip_reason(self) -> str | None:
        if self.lang in OUTPUT_LANGUAGES:
            return "output, shown not run"
        if self.directive and self.directive.startswith("skip:"):
            return self.directive[len("skip:"):].strip()
        return None

    @property
    def id(self) -> str:
        reason = self.skip_reason
        name = f"{self.page}:{self.line}:{self.lang or 'nolang'}"
        if reason:
            name += "-skip-" + re.sub(r"[^A-Za-z0-9.]+", "-", reason).strip("-")[:60]
        return name


def collect_blocks() -> list[Block]:
    blocks = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        previous = None
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start("lang")) + 1
            block = Block(str(page.relative_to(ROOT)), line, match["lang"], match["body"], match["directive"], previous)
            if block.lang == "python":
                previous = block
            blocks.append(block)
    return blocks


BLOCKS = collect_blocks()


def _param(block: Block):
    reason = block.skip_reason
    marks = [pytest.mark.skip(reason=reason)] if reason else []
    return pytest.param(block, id=block.id, marks=marks)


# --- smaller sizes for expensive commands ----------------------------------------------------------

def _set(args: list[str], option: str, value: str | None = None) -> list[str]:
    """``args`` with ``option`` set to ``value`` (replaced where given), or the flag added."""
    args = list(args)
    for i, arg in enumerate(args):
        if arg == option:
            if value is not None:
                args[i + 1] = value
            return args
        if value is not None and arg.startswith(option + "="):
            args[i] = f"{option}={value}"
            return args
    return args + ([option] if value is None else [option, value])


def _bench_case(args: list[str]) -> list[str]:
    quick_case = {"resnet50": "resnet50/64", "gpt2-small": "resnet50/64", "8x4M": "8x16k"}
    return [quick_case.get(arg, arg) if i and args[i - 1] == "--case" else arg for i, arg in enumerate(args)]


def _fewer_trials(args: list[str]) -> list[str]:
    return _set(args, "--tune", "2") if "--tune" in args else args


# (command, subcommand) -> the same command at a smaller size. ``out`` is a fresh directory name.
CHEAP = {
    ("sgdlab", "compare"): lambda a, out: _set(_set(_set(_set(_set(
        _fewer_trials(a), "--seeds", "1"), "--epochs", "1"), "--workers", "1"), "--no-progress"), "--out", out),
    ("sgdlab", "benchmark"): lambda a, out: _set(_set(_set(_set(_set(
        a, "--studies", "1"), "--trials", "1"), "--epochs", "1"), "--no-progress"), "--out", out),
    ("sgdlab", "tune lr"): lambda a, out: _set(_set(_set(a, "--steps", "30"), "--no-progress"), "--out", out),
    ("sgdlab", "tune search"): lambda a, out: _set(_set(_set(_set(_set(
        a, "--trials", "2"), "--epochs", "1"), "--confirm-seeds", "2"), "--no-progress"), "--out", out),
    ("sgdlab", "landscape"): lambda a, out: _set(_set(_set(
        a, "--steps", "30"), "--frames", "5"), "--out", out),
    ("sgdlab", "landscape --task"): lambda a, out: _set(_set(_set(_set(
        a, "--epochs", "1"), "--resolution", "5"), "--hessian-iters", "3"), "--out", out),
    ("sgdlab", "bench"): lambda a, out: _set(_set(_set(_bench_case(a), "--quick"), "--rounds", "1"), "--steps", "1"),
    ("python", "examples/lr_range_test.py"): lambda a, out: _set(a, "--epochs", "1"),
    ("python", "examples/compare_custom_task.py"): lambda a, out: _set(_set(_set(_set(
        a, "--epochs", "1"), "--seeds", "1"), "--workers", "1"), "--out", out),
    ("python", "benchmarks/compact_convergence.py"): lambda a, out: _set(_set(a, "--seeds", "1"), "--epochs", "1"),
    ("python", "benchmarks/state_rounding_noise.py"): lambda a, out: _set(_set(a, "--steps", "300"), "--warmup", "100"),
    ("python", "benchmarks/kernel_compute.py"): lambda a, out: _set(a, "--calls", "11"),
    ("python", "benchmarks/population_agreement.py"): lambda a, out: _set(_set(a, "--epochs", "1"), "--seeds", "1"),
    ("python", "benchmarks/in_backward_memory.py"): lambda a, out: _set(_set(_set(
        a, "--width", "256"), "--layers", "2"), "--batch", "4"),
}
WRAPPERS = {"nice": 2, "time": 0, "/usr/bin/time": 0}  # wrapper -> how many arguments it takes


def cheap_command(tokens: list[str], out: str) -> list[str]:
    """The command line ``tokens`` with :data:`CHEAP` applied to its program's arguments."""
    i = 0
    while i < len(tokens) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[i]):
        i += 1  # VAR=value before the command
    while i < len(tokens) and tokens[i] in WRAPPERS:
        i += 1 + WRAPPERS[tokens[i]]
    if i >= len(tokens):
        return tokens
    head, program, args = tokens[:i], tokens[i], tokens[i + 1:]
    name = Path(program).name
    if name == "run.sh":
        name, args = "sgdlab", args or ["compare"]
    if name == "sgdlab":
        if not args or {"--help", "-h", "--list"} & set(args):
            return tokens
        key = "tune " + args[1] if args[0] == "tune" and len(args) > 1 else args[0]
        if key == "landscape" and "--task" in args:
            key = "landscape --task"
        reduce = CHEAP.get(("sgdlab", key))
    elif name.startswith("python"):
        if args[:2] == ["-m", "pytest"]:
            raise AssertionError("a block runs pytest: mark it <!-- docs-test: skip: ... --> (the suite runs it)")
        reduce = CHEAP.get(("python", args[0])) if args else None
    else:
        reduce = None
    return head + [program] + (reduce(args, out) if reduce else args)


def cheap_script(body: str) -> str:
    """A bash block with every command line reduced by :func:`cheap_command`."""
    lines, count = [], 0
    for line in body.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        if not tokens or tokens[0] in ("source", "cd", "export"):
            lines.append(line)
            continue
        count += 1
        lines.append(shlex.join(cheap_command(tokens, f"docs-test-out-{count}")))
    return "\n".join(lines) + "\n"


def test_cheap_keeps_the_command_and_shrinks_only_its_size():
    script = cheap_script("sgdlab compare --task digits --seeds 5   # a race\n"
                          "nice -n 10 sgdlab tune search --task digits --opt sgd --space 'a=1|2' \\\n  --trials 30\n"
                          "sgdlab bench --case 8x4M --threads 1 --rounds 7\n./run.sh\nsgdlab compare --list\n")
    assert script.splitlines() == [
        "sgdlab compare --task digits --seeds 1 --epochs 1 --workers 1 --no-progress --out docs-test-out-1",
        "nice -n 10 sgdlab tune search --task digits --opt sgd --space 'a=1|2' --trials 2 --epochs 1 "
        "--confirm-seeds 2 --no-progress --out docs-test-out-2",
        "sgdlab bench --case 8x16k --threads 1 --rounds 1 --quick --steps 1",
        "./run.sh compare --seeds 1 --epochs 1 --workers 1 --no-progress --out docs-test-out-4",
        "sgdlab compare --list",
    ]


# --- running blocks ---------------------------------------------------------------------------------

def _environment(venv_on_path: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "torch")
    env["COLUMNS"] = "120"
    env.pop("VIRTUAL_ENV", None)
    venv_bin = str(VENV / "bin")
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and os.path.realpath(p) != os.path.realpath(venv_bin)]
    env["PATH"] = os.pathsep.join(([venv_bin] if venv_on_path else []) + path)
    return env


def _venv_in_sync() -> bool:
    """Whether scripts/venv.sh would leave .venv as it is (run.sh reinstalls it otherwise)."""
    stamp = VENV / ".sgdlab-installed"
    want = hashlib.sha256((ROOT / "requirements-dev.txt").read_bytes() + (ROOT / "pyproject.toml").read_bytes())
    return stamp.is_file() and stamp.read_text().strip() == want.hexdigest()


def _mirror(directory: Path) -> Path:
    """A directory holding links to everything in the repository root."""
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "runs", "site"):
            (directory / entry.name).symlink_to(entry)
    return directory


def _run(command: list[str], cwd: Path, env: dict[str, str], block: Block, commands: int = 1) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT * commands)
    assert result.returncode == 0, (
        f"{block.page}:{block.line} failed with exit code {result.returncode}\n"
        f"--- stdout (end)\n{result.stdout[-3000:]}\n--- stderr (end)\n{result.stderr[-3000:]}"
    )
    return result


@pytest.mark.slow
@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_code_block_runs(block: Block, tmp_path: Path):
    assert block.lang in RUN_LANGUAGES, (
        f"{block.page}:{block.line}: a code block in '{block.lang or 'no language'}': "
        "use ```python or ```bash (run here) or ```text (output)"
    )
    if block.lang == "python":
        source = block.body
        if block.directive == "continue":
            assert block.previous_python is not None, f"{block.page}:{block.line}: nothing to continue"
            source = block.previous_python.body + "\n" + source
        (tmp_path / "block.py").write_text(source)
        result = _run([sys.executable, "block.py"], tmp_path, _environment(venv_on_path=False), block)
        # run_race falls back to one process with this warning when it cannot pickle the task
        assert "cannot be sent to worker processes" not in result.stderr
        return

    programs = [shlex.split(line, comments=True) for line in block.body.replace("\\\n", " ").splitlines()]
    uses_venv = any(".venv/bin/" in token or token == "./run.sh" for tokens in programs for token in tokens)
    if uses_venv and not VENV.is_dir():
        pytest.skip("no .venv in the repository root (./run.sh and ./test.sh create it)")
    if any("./run.sh" in tokens for tokens in programs) and not _venv_in_sync():
        pytest.skip(".venv is not in sync with requirements-dev.txt: ./run.sh would reinstall it")
    prologue = "set -eo pipefail\n"
    if not uses_venv:
        prologue += "source .venv/bin/activate\n"
    script = prologue + cheap_script(block.body)
    commands = sum(1 for tokens in programs if tokens)
    _run(["bash", "-c", script], _mirror(tmp_path), _environment(venv_on_path=False), block, commands)


# --- the site ---------------------------------------------------------------------------------------

def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    result = _mkdocs(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert not warnings, "\n".join(warnings)
    return site


def test_site_builds_in_strict_mode_with_every_page_in_the_nav(site: Path):
    pages = [p.relative_to(ROOT / "docs").with_suffix("").as_posix() for p in (ROOT / "docs").rglob("*.md")]
    home = (site / "index.html").read_text()
    for page in pages:
        if page != "index":
            assert (site / page / "index.html").is_file(), page
            assert f'href="{page}/"' in home, f"docs/{page}.md is not in mkdocs.yml's nav"


def test_api_reference_is_generated_from_the_docstrings(site: Path):
    api = (site / "api" / "sgdlab" / "index.html").read_text()
    for name in ("sgdlab.SGD", "sgdlab.Adam", "sgdlab.AdamW", "sgdlab.SWATS", "sgdlab.ScheduleFreeSGD",
                 "sgdlab.ScheduleFreeAdamW", "sgdlab.SAM", "sgdlab.optim.compact_state"):
        assert f'id="{name}"' in api, name
    assert 'id="sgdlab.keras.AdamW"' in (site / "api" / "keras" / "index.html").read_text()
    lab = (site / "api" / "lab" / "index.html").read_text()
    assert 'id="sgdlab.lab.runner.run_race"' in lab
    assert "workers" in lab  # run_race's docstring, not only its name


def test_a_broken_link_fails_the_strict_build(tmp_path: Path):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "src").symlink_to(ROOT / "src")
    with open(docs / "speed.md", "a") as page:
        page.write("\nSee [the missing page](no-such-page.md).\n")
    result = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr


def test_readme_links_point_to_existing_pages_and_headings(site: Path):
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        assert (ROOT / path).is_file(), f"README links to {path}, which does not exist"
        if anchor:
            assert path.startswith("docs/") and path.endswith(".md"), target
            page = site / Path(path).relative_to("docs").with_suffix("") / "index.html"
            if page.parent.name == "index":
                page = page.parent.parent / "index.html"
            assert f'id="{anchor}"' in page.read_text(), f"README links to {target}: no such heading"


INLINE_COMMAND = re.compile(
    r"^(?:[A-Z_]+=\S+ )*(?:nice -n \d+ |time |/usr/bin/time )*(?:\.venv/bin/)?"
    r"(?:sgdlab (?:compare|tune|landscape|bench)\b.* --?\w|python \S+\.py)"
)


def test_commands_written_in_the_text_are_run_as_code_blocks():
    """A command with arguments written inline (`sgdlab compare --seeds 3`) must also stand in a
    code block on some page, where the tests above run it, or in a block marked skip whose
    reason says why CI cannot (a CUDA device, minutes of work); `...` marks an abbreviation."""
    run = {" ".join(line.split()) for b in BLOCKS if b.lang == "bash"
           for line in b.body.replace("\\\n", " ").splitlines()}
    run = {line.split(" #")[0].strip() for line in run}
    missing = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for span in re.findall(r"`([^`]+)`", text):
            command = " ".join(span.split())
            if INLINE_COMMAND.match(command) and "..." not in command and command not in run:
                missing.append(f"{page.relative_to(ROOT)}: {command}")
    assert not missing, "\n".join(missing)
