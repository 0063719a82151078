"""Every code block of README.md and of the pages under docs/ runs, is checked, or is skipped
with its reason (`tests/readme_examples.py` says which and how): examples cannot drift from the
code. `pytest -s` prints what was done with each command."""

from __future__ import annotations

import pytest

from tests.readme_examples import (
    COMMANDS,
    LANGUAGES,
    TESTED_RUN,
    TRAINED_RUN,
    Command,
    Examples,
    all_blocks,
    classify,
    code_blocks,
    describe,
    make_workdir,
    markdown_pages,
    shell_commands,
)

BLOCKS = all_blocks()


def blocks_of(kind: str) -> list:
    return [pytest.param(block, id=block.where) for block in BLOCKS if block.kind == kind]


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Examples:
    return Examples(make_workdir(tmp_path_factory.mktemp("readme")))


@pytest.fixture(scope="module")
def trained(examples) -> Examples:
    """The quick start's run, fitted 2 iterations and tested: the run folder that the commands
    of `udaseg test|validate|predict|report` read."""
    for words in (TRAINED_RUN, TESTED_RUN):
        assert examples.run(Command(words)).action == "ran"
    return examples


def test_every_code_block_is_tagged_with_a_known_language():
    untagged = [f"{block.where} ({block.language or 'no tag'})" for block in BLOCKS
                if block.kind is None]
    assert not untagged, (f"tag these code fences with one of {sorted(LANGUAGES)} ('text' for "
                          f"listings that never run): {untagged}")


def test_the_documentation_has_examples_of_every_kind():
    assert {block.kind for block in BLOCKS} >= {"shell", "python", "yaml"}


@pytest.mark.parametrize("block", blocks_of("shell"))
def test_shell_block(block, trained):
    done = {}
    for command in shell_commands(block.text):
        done[block.where, command.text] = trained.run(command)
    print("\n" + describe(done))
    assert done, f"{block.where}: a shell block without a command"


@pytest.mark.parametrize("block", blocks_of("python"))
def test_python_block(block, examples):
    trained_classes = examples.run_python(block)
    print(f"\n{block.where}: executed; trained 2 iterations: {trained_classes or 'nothing'}")


@pytest.mark.parametrize("block", blocks_of("yaml"))
def test_yaml_block(block, examples):
    outcome = examples.check_yaml(block)
    print("\n" + describe({(block.where, "yaml"): outcome}))


# ------------------------------------------------------------------ the harness itself
def test_blocks_are_read_from_the_readme_and_every_page_under_docs(tmp_path):
    (tmp_path / "README.md").write_text("# x\n\n```bash\nudaseg fit \\\n    --config a.yaml\n```\n")
    guide = tmp_path / "docs" / "guide" / "methods.md"
    guide.parent.mkdir(parents=True)
    guide.write_text("1. Step:\n\n   ```yaml\n   a: 1\n     b: 2\n   ```\n\n~~~python\nx = 1\n~~~\n"
                     "````text\n```\nnested\n```\n````\n")
    assert markdown_pages(tmp_path) == [tmp_path / "README.md", guide]
    blocks = [block for page in markdown_pages(tmp_path) for block in code_blocks(page, tmp_path)]
    assert [(block.where, block.kind, block.text) for block in blocks] == [
        ("README.md:3", "shell", "udaseg fit \\\n    --config a.yaml\n"),
        ("docs/guide/methods.md:3", "yaml", "a: 1\n  b: 2\n"),
        ("docs/guide/methods.md:8", "python", "x = 1\n"),
        ("docs/guide/methods.md:11", "text", "```\nnested\n```\n"),
    ]


def test_shell_lines_are_split_into_commands():
    text = ("# a comment line\n"
            "python3 -m venv .venv && . .venv/bin/activate && pip install -e \".[test]\"\n"
            "UDASEG_DATA_ROOT=/data udaseg fit --config c.yaml \\\n"
            "    --model.init_args.inference.scales \"[0.75, 1.0]\"   # a trailing comment\n")
    assert shell_commands(text) == [
        Command(("python3", "-m", "venv", ".venv")),
        Command((".", ".venv/bin/activate")),
        Command(("pip", "install", "-e", ".[test]")),
        Command(("udaseg", "fit", "--config", "c.yaml", "--model.init_args.inference.scales",
                 "[0.75, 1.0]"), (("UDASEG_DATA_ROOT", "/data"),)),
    ]
    with pytest.raises(ValueError, match="not supported"):
        shell_commands("udaseg report runs | head\n")


def test_a_command_that_is_neither_run_nor_skipped_fails():
    with pytest.raises(LookupError, match="no entry of COMMANDS"):
        classify(Command(("make", "docs")))
    assert classify(Command(("python", "benchmarks/train_step.py")))[0] == "script"
    assert classify(Command(("python", "-m", "pytest", "-q")))[0] == "skip"
    assert all(reason for _, action, reason in COMMANDS if action != "udaseg")


def test_a_wrong_example_fails(examples, tmp_path):
    """What the harness catches: a misspelt key, a missing config, a refused script argument."""
    for words, message in [
            (("udaseg", "fit", "--config", "configs/synthetic/minent.yaml",
              "--model.init_args.lamda_ent_main", "1"), "exited with 2"),
            (("udaseg", "fit", "--config", "configs/synthetic/no_such_method.yaml"), "exited"),
            (("python", "benchmarks/synthetic_table.py", "--methods", "no_such_method"),
             "no config"),
            (("python", "benchmarks/train_step.py", "--bn-stats", "sometimes"), "refused")]:
        with pytest.raises(AssertionError, match=message):
            examples.run(Command(words))
    page = tmp_path / "README.md"
    page.write_text("```yaml\nmodel:\n  init_args:\n    lamda_adv_main: 0.1\n```\n")
    with pytest.raises(AssertionError, match="exited with 2"):
        examples.check_yaml(code_blocks(page, tmp_path)[0])
    page.write_text("```python\nfrom udaseg.methods import NoSuchMethod\n```\n")
    with pytest.raises(ImportError):
        examples.run_python(code_blocks(page, tmp_path)[0])


def test_the_trained_run_is_the_readme_quick_start():
    quick_start = [command.words for block in BLOCKS if block.kind == "shell"
                   for command in shell_commands(block.text)]
    assert TRAINED_RUN in quick_start and TESTED_RUN in quick_start
