"""Mistakes in an `sgdlab` command line: one line on stderr and exit code 2, before any work; bugs keep
their traceback; every --help text shows commands that work when pasted into a shell."""

import argparse
import shlex

import pytest

from sgdlab.cli import build_parser, main


@pytest.fixture
def no_work(monkeypatch):
    """Makes any start of real work (building a data set, a landscape, a benchmark) fail the test."""
    import sgdlab.bench
    import sgdlab.lab.landscape
    import sgdlab.lab.tasks

    def work(*args, **kwargs):
        raise AssertionError("the command started working before it checked its arguments")

    monkeypatch.setattr(sgdlab.lab.tasks, "get_task", work)
    monkeypatch.setattr(sgdlab.lab.landscape, "explore", work)
    monkeypatch.setattr(sgdlab.bench, "run", work)


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"sgdlab {command}: error: "), err
    return err


# Every option that names where output goes, with the subcommand's other arguments.
OUTPUT_OPTIONS = [
    (["compare", "--task", "digits"], "--out", "dir"),
    (["landscape"], "--out", "dir"),
    (["landscape", "--task", "digits"], "--out", "dir"),
    (["tune", "lr", "--task", "digits"], "--out", "dir"),
    (["tune", "search", "--task", "digits"], "--out", "dir"),
    (["tune", "search", "--task", "digits"], "--storage", "file"),
    (["bench", "--quick"], "--json", "file"),
]


@pytest.mark.parametrize("argv, option, kind", OUTPUT_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_an_output_path_under_a_file_is_refused_before_any_work(argv, option, kind, tmp_path, capsys, no_work):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    assert main([*argv, option, str(a_file / "sub")]) == 2
    assert "notes.txt" in _one_error_line(capsys, argv[0])
    assert a_file.read_text() == "mine\n"


@pytest.mark.parametrize("argv, option, kind", OUTPUT_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_an_output_path_of_the_wrong_kind_is_refused_before_any_work(argv, option, kind, tmp_path, capsys, no_work):
    if kind == "dir":
        target = tmp_path / "README.md"
        target.write_text("mine\n")
        expected = "is a file, not a directory"
    else:
        target = tmp_path / "a-directory"
        target.mkdir()
        expected = "is a directory"
    assert main([*argv, option, str(target)]) == 2
    assert expected in _one_error_line(capsys, argv[0])
    if kind == "dir":
        assert target.read_text() == "mine\n"


def test_the_output_checks_leave_an_existing_file_as_it_was(tmp_path):
    from sgdlab.cli.checks import output_dir, output_file

    existing = tmp_path / "bench.json"
    existing.write_text("{}")
    assert output_file(existing, "--json") == existing and existing.read_text() == "{}"
    fresh = tmp_path / "new" / "bench.json"
    output_file(fresh, "--json")
    assert not fresh.exists() and fresh.parent.is_dir()  # checked, not written
    assert output_dir(tmp_path / "a" / "b").is_dir()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["compare", "--task", "nope"], "unknown task 'nope'"),
        (["compare", "--task", "logistic", "--opt", "sgd:foo=1"], "unknown hyperparameter 'foo'"),
        (["compare", "--task", "logistic", "--opt", "adam:lr=-1"], "lr=-1"),
        (["tune", "lr", "--task", "nope"], "unknown task 'nope'"),
        (["tune", "lr", "--task", "logistic", "--opt", "sgd:foo=1"], "unknown hyperparameter 'foo'"),
        (["tune", "search", "--task", "logistic", "--opt", "nosuch"], "unknown optimizer 'nosuch'"),
        (["tune", "search", "--task", "logistic", "--val-fraction", "2"], "--val-fraction"),
        (["landscape", "--task", "nope"], "unknown task 'nope'"),
        (["landscape", "banana"], "unknown function 'banana'"),
        (["landscape", "2"], "does not depend on x or y"),
        (["landscape", "quadratic", "--opt", "sgd:foo=1"], "unknown hyperparameter 'foo'"),
        (["bench", "--case", "nope"], "Invalid case: 'nope'"),
        (["bench", "--optimizer", "nope"], "Invalid optimizer: 'nope'"),
        (["bench", "--quick", "--device", "tpu"], "Invalid device: 'tpu'"),
        (["bench", "--quick", "--case", "os:getcwd"], "returned str, not an nn.Module"),
        (["bench", "--quick", "--case", "os:sep"], "is not callable"),
        (["tune", "search", "--task", "logistic", "--storage", "sqlite:////proc/x/y.db"], "cannot be opened"),
        (["demo", "--lr", "-1"], "Invalid learning rate"),
    ],
)
def test_bad_names_and_values_give_one_line_and_exit_2(argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output directories land here
    assert main(argv) == 2
    assert expected in _one_error_line(capsys, argv[0])


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "--seeds", "-1"],
        ["compare", "--epochs", "-3"],
        ["compare", "--workers", "0"],
        ["tune", "lr", "--seed", "-1"],
        ["tune", "search", "--seed", "-1"],
        ["tune", "search", "--seed", str(2**32)],
        ["tune", "search", "--workers", "0"],
        ["tune", "search", "--epochs", "-1"],
        ["landscape", "--seed", "-5"],
        ["bench", "--rounds", "0"],
        ["bench", "--threads", "0"],
        ["demo", "--steps", "-1"],
    ],
)
def test_out_of_range_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("sgdlab")


def test_a_lab_error_escaping_a_command_is_one_line_but_a_bug_keeps_its_traceback(monkeypatch, capsys):
    import sgdlab.cli.demo
    from sgdlab.lab.specs import SpecError

    def mistaken(args):
        raise SpecError("unknown optimizer 'x'")

    monkeypatch.setattr(sgdlab.cli.demo, "run", mistaken)
    assert main(["demo"]) == 2
    assert _one_error_line(capsys, "demo") == "sgdlab demo: error: unknown optimizer 'x'"

    def buggy(args):
        raise KeyError("a bug")

    monkeypatch.setattr(sgdlab.cli.demo, "run", buggy)
    with pytest.raises(KeyError):
        main(["demo"])


def _help_texts():
    """(command, its --help text) for sgdlab and every subcommand, nested ones included."""
    stack = [("sgdlab", build_parser())]
    while stack:
        name, parser = stack.pop()
        yield name, parser.format_help()
        for action in parser._actions:  # noqa: SLF001 - argparse keeps its subcommands there
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                stack.extend((f"{name} {sub_name}", sub) for sub_name, sub in action.choices.items())


def test_help_texts_have_no_doubled_percent_signs():
    texts = dict(_help_texts())
    assert {"sgdlab compare", "sgdlab tune search", "sgdlab bench"} <= set(texts)
    for name, text in texts.items():
        assert "%%" not in text, name


def test_example_commands_in_help_texts_paste_into_a_shell_as_one_command():
    examples = [line.strip() for _, text in _help_texts() for line in text.splitlines()
                if line.strip().startswith("sgdlab ")]
    assert any("--space" in line for line in examples)
    for line in examples:
        command = line.split("   ")[0]  # examples may carry a comment after a wide gap
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        tokens = list(lexer)
        assert not {"|", "||", "&", ";", ">", "<"} & set(tokens), line
