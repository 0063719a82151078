"""The code blocks of the Markdown documentation (README.md and every page under docs/) and what
`tests/test_readme_examples.py` does with them, so that no example drifts from the code.

Every fence is tagged: `bash` (commands), `python`, `yaml`, or `text` (listings and outputs, never
run). A command is dispatched by its leading words through `COMMANDS`; one that matches no entry
fails the test, so a new example is run, checked or skipped with its reason here, never ignored.

- `udaseg` commands run in-process in a working directory holding a copy of configs/ and the
  inputs the examples name (`my_images/`, `my_package.MySegmenter`), shortened to a few images
  and iterations. The module trains one run, `TRAINED_RUN` (the quick start), and the commands
  that read a run folder (`test`, `validate`, `predict` with its checkpoint, `report`) run on
  it. Any other `fit`, and every command whose config needs a dataset that is not on this
  machine, more than one device or a GPU, is resolved with `--print_config` (every key exists,
  every class and file named is found).
- Python blocks are executed; each method or segmenter class they define trains 2 iterations.
- YAML blocks are parsed; a config fragment is merged into the quick start's config, a component
  (`class_path` at the top) put where its base class goes, and both resolved.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import inspect
import io
import itertools
import os
import re
import runpy
import shlex
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import yaml
from PIL import Image

from tests.helpers import REPO, fit, tiny_method
from udaseg.methods import SourceOnly, UDAMethod
from udaseg.models import Segmenter
from udaseg.runtime.cli import latest_last_checkpoint, main, run_name

#: Fence tags and what they hold.
LANGUAGES = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python",
             "yaml": "yaml", "yml": "yaml", "text": "text"}

#: The run the module trains (2 iterations): the README's quick start.
TRAINED_RUN = ("udaseg", "fit", "--config", "configs/synthetic/source_only.yaml")
#: ... and its evaluation on the test split, which `udaseg report --stage test` reads.
TESTED_RUN = ("udaseg", "test", "--config", "configs/synthetic/source_only.yaml", "--ckpt_path",
              "runs/synthetic/source_only/version_0/checkpoints/last.ckpt")

#: What happens to a shell command, by its leading words (first match wins; a last word ending
#: in "/" matches words that start with it): an action and, unless it runs, why not.
COMMANDS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("udaseg",), "udaseg", ""),
    (("python", "-m", "udaseg.runtime.cli"), "udaseg", ""),
    (("torchrun",), "launcher", "starts several processes; checked: its udaseg command line "
                                "resolves"),
    (("sbatch",), "sbatch", "needs a SLURM cluster; checked: the script exists and its "
                            "`udaseg fit` resolves"),
    (("python", "benchmarks/"), "script", "a benchmark (minutes to hours); checked: the script "
                                          "exists and accepts its arguments"),
    (("pip", "install"), "pip", "installs packages (CI does, in a fresh environment); checked: "
                                "the extras it names exist"),
    (("python3", "-m", "venv"), "skip", "creates a virtual environment (CI does)"),
    ((".", ".venv/bin/activate"), "skip", "activates that environment"),
    (("ruff", "check"), "skip", "the linter: CI runs it"),
    (("mkdocs",), "skip", "builds or serves the documentation site: tests/test_docs.py "
                          "builds it with --strict"),
    (("python", "-m", "udaseg.report.pages"), "skip", "rewrites the documentation's generated "
                                                       "tables: tests/test_docs.py checks them"),
    (("python", "-m", "pytest"), "skip", "the test suite itself: CI runs it"),
)

#: Scripts run with `sbatch SCRIPT CONFIG [udaseg fit options]`.
SBATCH_SCRIPTS = ("examples/slurm/train.sbatch",)
#: Datasets that exist on any machine (rendered, or a folder the working directory holds).
LOCAL_DATASETS = ("udaseg.data.SyntheticStreets", "udaseg.data.ImageFolder")
#: Top-level keys of a run config (a YAML block with only these is a config fragment).
CONFIG_KEYS = {"seed_everything", "trainer", "model", "data", "checkpoint", "snapshots",
               "preemption", "iou_report", "predictions", "ckpt_path", "config"}
#: YAML blocks that are not checked, by their first line, with the reason.
SKIPPED_YAML: dict[str, str] = {}
#: Where a component YAML (`class_path` at the top) goes, by its base class.
COMPONENT_KEYS = ((Segmenter, "model.init_args.segmenter"),)
#: Image counts of a shortened command, per data stream.
SHORT_STREAMS = {"source": 4, "target": 4, "val": 2, "test": 2}
#: Options naming a folder the command writes: it must hold files afterwards.
OUTPUT_OPTIONS = ("--predictions.output_dir", "--plots")

#: `my_package`, the user's own package of the README's "Adding a segmenter".
MY_PACKAGE = '''
import torch
from torch import nn

from udaseg.models import Segmenter


class MySegmenter(Segmenter):
    """A strided convolution and a 1x1 classifier."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.num_classes, self.heads = num_classes, ("main",)
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, stride=4, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, images: torch.Tensor) -> dict:
        return {"main": self.classifier(self.features(images))}

    def backbone_parameters(self) -> list:
        return list(self.features.parameters())

    def classifier_parameters(self) -> list:
        return list(self.classifier.parameters())
'''


# ------------------------------------------------------------------ blocks
@dataclass(frozen=True)
class Block:
    """One fenced code block: its page (relative to the repository), the line of its opening
    fence, its tag ("" if none) and its text, without the indentation of the fence."""

    page: str
    line: int
    language: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def kind(self) -> Optional[str]:
        return LANGUAGES.get(self.language)


FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


def markdown_pages(root: Path = REPO) -> list[Path]:
    """README.md and every Markdown page under docs/, recursively."""
    readme = [root / "README.md"] if (root / "README.md").is_file() else []
    return readme + sorted((root / "docs").rglob("*.md"))


def code_blocks(page: Path, root: Path = REPO) -> list[Block]:
    """The fenced blocks of one page, in order (CommonMark fences: ``` or ~~~, indented too)."""
    lines, blocks, index = page.read_text(encoding="utf-8").splitlines(), [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        end = index + 1
        while end < len(lines) and not (set(lines[end].strip()) == {fence[0]} and
                                        len(lines[end].strip()) >= len(fence)):
            end += 1
        if end == len(lines):
            raise ValueError(f"{page.relative_to(root)}:{index + 1}: code fence never closed")
        body = [re.sub(rf"^ {{0,{indent}}}", "", line) for line in lines[index + 1:end]]
        info = opening["info"].split()
        blocks.append(Block(str(page.relative_to(root)), index + 1, info[0] if info else "",
                            "\n".join(body) + "\n"))
        index = end + 1
    return blocks


def all_blocks(root: Path = REPO) -> list[Block]:
    return [block for page in markdown_pages(root) for block in code_blocks(page, root)]


# ------------------------------------------------------------------ shell commands
@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    environment: tuple[tuple[str, str], ...] = ()

    @property
    def text(self) -> str:
        return shlex.join(self.words)


ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")


def shell_commands(text: str) -> list[Command]:
    """The commands of a shell block: `\\` continuations joined, `&&` chains split, comments
    dropped, leading `NAME=value` assignments kept apart; any other shell syntax is refused."""
    commands = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, ""
        words = list(lexer)
        words = words[:next((i for i, word in enumerate(words) if word.startswith("#")),
                            len(words))]
        if not words:
            continue
        chain: list[list[str]] = [[]]
        for word in words:
            if word == "&&":
                chain.append([])
            elif set(word) <= set("();<>|&"):
                raise ValueError(f"shell syntax {word!r} is not supported by the README test: "
                                 f"{line.strip()}")
            else:
                chain[-1].append(word)
        if not all(chain):
            raise ValueError(f"an empty command in: {line.strip()}")
        for command in chain:
            assignments = list(itertools.takewhile(ASSIGNMENT.match, command))
            commands.append(Command(tuple(command[len(assignments):]),
                                    tuple(tuple(word.split("=", 1)) for word in assignments)))
    return commands


def matches(words: Sequence[str], prefix: Sequence[str]) -> bool:
    """Whether `words` start with `prefix`; a last word of `prefix` ending in "/" matches the
    words that start with it."""
    *whole, last = prefix
    if len(words) < len(prefix) or list(words[:len(whole)]) != whole:
        return False
    word = words[len(whole)]
    return word == last or (last.endswith("/") and word.startswith(last))


def classify(command: Command) -> tuple[str, str]:
    """(action, reason) of `COMMANDS` for the command; a command no entry matches is an error."""
    for prefix, action, reason in COMMANDS:
        if matches(command.words, prefix):
            return action, reason
    raise LookupError(f"`{command.text}`: no entry of COMMANDS in tests/readme_examples.py "
                      "matches it; run it there, or skip it with the reason")


# ------------------------------------------------------------------ running them
@dataclass(frozen=True)
class Outcome:
    """What was done with one example: "ran", "resolved" (--print_config), "checked" or
    "skipped", and a detail (the reason it did not run)."""

    action: str
    detail: str = ""


@contextlib.contextmanager
def inside(directory: Path, environment: Sequence[tuple[str, str]] = ()) -> Iterator[None]:
    """cwd = `directory`, importable from there, `environment` set; all restored afterwards."""
    previous, saved = Path.cwd(), {name: os.environ.get(name) for name, _ in environment}
    os.chdir(directory)
    sys.path.insert(0, str(directory))
    os.environ.update(dict(environment))
    try:
        yield
    finally:
        os.chdir(previous)
        sys.path.remove(str(directory))
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def call(function, arguments: Sequence[str], what: str) -> str:
    """`function(arguments)` with stdout captured and returned; a failure (an exception or a
    non-zero exit) is an AssertionError naming the command, with the end of its stderr."""
    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = sys.argv[:1]   # LightningCLI warns when both sys.argv and its args hold options
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            function(list(arguments))
    except SystemExit as error:
        if error.code not in (0, None):
            raise AssertionError(f"`{what}` exited with {error.code}:\n"
                                 f"{err.getvalue()[-3000:]}") from None
    except Exception as error:
        raise AssertionError(f"`{what}` failed: {type(error).__name__}: {error}\n"
                             f"{err.getvalue()[-2000:]}") from error
    finally:
        sys.argv = argv
    return out.getvalue()


def make_workdir(directory: Path) -> Path:
    """A working directory for the examples: configs/ and results/ (copies: examples may write
    next to them), `my_images/` (two images of different sizes) and the module `my_package`."""
    shutil.copytree(REPO / "configs", directory / "configs")
    shutil.copytree(REPO / "results", directory / "results")
    rng = np.random.default_rng(0)
    (directory / "my_images").mkdir()
    for name, size in (("street.png", (40, 56)), ("square.jpg", (48, 48))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            directory / "my_images" / name)
    (directory / "my_package.py").write_text(MY_PACKAGE)
    return directory


class Examples:
    """Runs and checks the examples in `workdir` (`make_workdir`); each distinct command runs
    once (the module's trained run is reused by the blocks that repeat it)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.outcomes: dict[Command, Outcome] = {}

    def run(self, command: Command) -> Outcome:
        if command not in self.outcomes:
            action, reason = classify(command)
            with inside(self.workdir, command.environment):
                self.outcomes[command] = getattr(self, f"do_{action}")(command, reason)
        return self.outcomes[command]

    # --- udaseg
    def resolve(self, arguments: Sequence[str]) -> dict:
        """The resolved config of `udaseg ARGUMENTS` (--print_config)."""
        text = call(main, [*arguments, "--print_config"],
                    f"udaseg {shlex.join(arguments)} --print_config")
        return yaml.safe_load(text)

    def do_udaseg(self, command: Command, reason: str) -> Outcome:
        arguments = list(command.words[1 if command.words[0] == "udaseg" else 3:])
        if arguments[:1] == ["report"]:
            output = call(main, arguments, command.text)
            assert output.strip(), f"`{command.text}` printed nothing"
            self.check_outputs(arguments)
            return Outcome("ran")
        config = self.resolve(arguments)
        subcommand = arguments[0]
        obstacles = self.obstacles(config, subcommand)
        if subcommand == "fit" and command.words != TRAINED_RUN and not obstacles:
            obstacles = [f"one run is trained per test module, `{shlex.join(TRAINED_RUN)}`"]
        if obstacles:
            return Outcome("resolved", "; ".join(obstacles))
        call(main, self.shortened(arguments, config), command.text)
        self.check_run(arguments, config)
        self.check_outputs(arguments)
        return Outcome("ran", "shortened: 2 iterations, a few images" if subcommand == "fit"
                       else "shortened: a few images")

    @staticmethod
    def obstacles(config: dict, subcommand: str) -> list[str]:
        """Why the resolved `config` cannot run on this machine (none: it can)."""
        data = config.get("data") or {}
        datasets = sorted({stream["class_path"].rsplit(".", 1)[-1]
                           for stream in data.values()
                           if isinstance(stream, dict) and "class_path" in stream and
                           stream["class_path"] not in LOCAL_DATASETS})
        obstacles = [f"needs the datasets {', '.join(datasets)}"] if datasets else []
        trainer = config.get("trainer") or {}
        if trainer.get("accelerator") in ("gpu", "cuda", "tpu", "mps"):
            obstacles.append(f"needs a GPU (trainer.accelerator {trainer['accelerator']})")
        devices, nodes = str(trainer.get("devices", 1)), trainer.get("num_nodes") or 1
        if devices not in ("1", "auto") or nodes > 1:
            obstacles.append(f"needs {devices} devices on {nodes} node(s)")
        checkpoint = config.get("ckpt_path")
        if subcommand != "fit" and checkpoint and not Path(checkpoint).is_file():
            obstacles.append(f"its checkpoint {checkpoint} is not trained here")
        if subcommand != "fit" and not checkpoint:
            obstacles.append("no --ckpt_path: evaluates the released weights its config names")
        return obstacles

    @staticmethod
    def shortened(arguments: Sequence[str], config: dict) -> list[str]:
        extra = ["--trainer.enable_progress_bar", "false", "--data.num_workers", "0",
                 "--data.batch_size", "2", "--data.eval_batch_size", "2"]
        if arguments[0] == "fit":
            extra += ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]
        for key, count in SHORT_STREAMS.items():
            stream = (config.get("data") or {}).get(key)
            if isinstance(stream, dict) and "num_images" in stream.get("init_args", {}):
                extra += [f"--data.{key}.init_args.num_images", str(count)]
        return [*arguments, *extra]

    @staticmethod
    def check_run(arguments: Sequence[str], config: dict) -> None:
        """A fit leaves a last.ckpt in its run folder, an evaluation its metrics file."""
        subcommand = arguments[0]
        if subcommand not in ("fit", "validate", "test"):
            return
        logger = (config["trainer"].get("logger") or {}).get("init_args", {})
        configs = [Path(arguments[i + 1]) for i, word in enumerate(arguments[:-1])
                   if word in ("--config", "-c")]
        name = logger.get("name")
        if name in (None, "lightning_logs"):
            name = run_name(configs, subcommand)
        folder = Path(logger.get("save_dir") or "runs") / name
        if subcommand == "fit":
            assert latest_last_checkpoint(folder) is not None, f"no last.ckpt under {folder}"
        else:
            stage = "val" if subcommand == "validate" else "test"
            assert list(folder.glob(f"version_*/{stage}_metrics.json")), \
                f"no {stage}_metrics.json under {folder}"

    @staticmethod
    def check_outputs(arguments: Sequence[str]) -> None:
        for i, word in enumerate(arguments[:-1]):
            if word in OUTPUT_OPTIONS:
                folder = Path(arguments[i + 1])
                assert folder.is_dir() and any(folder.iterdir()), f"{word} {folder} is empty"

    # --- other commands
    def do_launcher(self, command: Command, reason: str) -> Outcome:
        words = list(command.words)
        assert words[words.index("-m") + 1:][:1] == ["udaseg.runtime.cli"], \
            f"`{command.text}`: expected `-m udaseg.runtime.cli`"
        self.resolve(words[words.index("-m") + 2:])
        return Outcome("checked", reason)

    def do_sbatch(self, command: Command, reason: str) -> Outcome:
        scripts = [word for word in command.words if word in SBATCH_SCRIPTS]
        assert scripts, f"`{command.text}`: no script of SBATCH_SCRIPTS"
        assert (REPO / scripts[0]).is_file(), f"{scripts[0]} does not exist"
        config, *options = command.words[command.words.index(scripts[0]) + 1:]
        self.resolve(["fit", "--config", config, *options])
        return Outcome("checked", reason)

    def do_script(self, command: Command, reason: str) -> Outcome:
        script = REPO / command.words[1]
        assert script.is_file(), f"{command.words[1]} does not exist"
        arguments = parsed_arguments(script, command.words[2:])
        if command.words[1] == "benchmarks/synthetic_table.py":
            for method in arguments.methods:
                config = REPO / "configs" / arguments.benchmark / f"{method}.yaml"
                assert config.is_file(), f"`{command.text}`: no config {config}"
        return Outcome("checked", reason)

    def do_pip(self, command: Command, reason: str) -> Outcome:
        extras = importlib.metadata.metadata("udaseg").get_all("Provides-Extra") or []
        for word in command.words[2:]:
            match = re.fullmatch(r"\.(?:\[(?P<extras>[\w,-]+)\])?", word)
            if match and match["extras"]:
                missing = set(match["extras"].split(",")) - set(extras)
                assert not missing, f"`{command.text}`: no extra {sorted(missing)}"
        return Outcome("checked", reason)

    def do_skip(self, command: Command, reason: str) -> Outcome:
        return Outcome("skipped", reason)

    # --- Python and YAML blocks
    def run_python(self, block: Block) -> list[str]:
        """Execute the block; train each method and segmenter class it defines 2 iterations.
        Returns the names of the classes trained."""
        namespace = {"__name__": f"readme_example_{block.line}"}
        with inside(self.workdir):
            exec(compile(block.text, block.where, "exec"), namespace)
        trained = []
        for value in namespace.values():
            if not (isinstance(value, type) and value.__module__ == namespace["__name__"]):
                continue
            if issubclass(value, UDAMethod) and not inspect.isabstract(value):
                method = tiny_method(value)
            elif issubclass(value, Segmenter) and not inspect.isabstract(value):
                method = tiny_method(SourceOnly, segmenter=value)
            else:
                continue
            trainer = fit(method, steps=2)
            assert trainer.global_step == 2, f"{value.__name__}: {trainer.global_step} iterations"
            losses = {key: float(metric) for key, metric in trainer.callback_metrics.items()
                      if key.startswith("train/")}
            assert losses and all(np.isfinite(list(losses.values()))), losses
            trained.append(value.__name__)
        return trained

    def check_yaml(self, block: Block) -> Outcome:
        fragment = yaml.safe_load(block.text)
        if block.text.splitlines()[0] in SKIPPED_YAML:
            return Outcome("skipped", SKIPPED_YAML[block.text.splitlines()[0]])
        assert isinstance(fragment, dict), f"{block.where}: not a YAML mapping"
        path = self.workdir / "fragments" / f"{block.page.replace('/', '_')}_{block.line}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(block.text)
        base = ["fit", "--config", TRAINED_RUN[3]]
        with inside(self.workdir):
            if set(fragment) <= CONFIG_KEYS:
                resolved = self.resolve([*base, "--config", str(path)])
                assert_contained(fragment, resolved, "")
                return Outcome("resolved", f"merged into {TRAINED_RUN[3]}")
            if "class_path" in fragment:
                component = import_class(fragment["class_path"])
                key = next((key for base_class, key in COMPONENT_KEYS
                            if issubclass(component, base_class)), None)
                assert key, (f"{block.where}: {fragment['class_path']} is no component of "
                             "COMPONENT_KEYS in tests/readme_examples.py: add where it goes")
                resolved = self.resolve([*base, f"--{key}", str(path)])
                for part in key.split("."):
                    resolved = resolved[part]
                assert resolved["class_path"].rsplit(".", 1)[-1] == component.__name__
                assert_contained(fragment.get("init_args", {}), resolved["init_args"], key)
                return Outcome("resolved", f"as {key} of {TRAINED_RUN[3]}")
        raise AssertionError(f"{block.where}: a YAML block that is neither a config fragment "
                             f"(top-level keys of {sorted(CONFIG_KEYS)}) nor a component "
                             "(class_path): check it in tests/readme_examples.py, or skip it "
                             "there (SKIPPED_YAML) with the reason")


def assert_contained(fragment: object, resolved: object, key: str) -> None:
    """Every value the fragment sets is in the resolved config (nothing was dropped); a class
    path may be resolved to another module path of the same class, an included file to its
    content."""
    if isinstance(fragment, dict):
        assert isinstance(resolved, dict), f"{key}: {resolved!r} instead of a mapping"
        for name, value in fragment.items():
            if name == "config":
                continue
            assert name in resolved, f"{key}.{name} is not in the resolved config"
            assert_contained(value, resolved[name], f"{key}.{name}".lstrip("."))
    elif isinstance(fragment, str) and fragment.endswith(".yaml") and isinstance(resolved, dict):
        return
    elif key.endswith("class_path"):
        assert str(resolved).rsplit(".", 1)[-1] == fragment.rsplit(".", 1)[-1], (key, resolved)
    else:
        assert resolved == fragment, f"{key}: {fragment!r} resolved to {resolved!r}"


def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


class ArgumentsParsed(Exception):
    """Raised by the patched `parse_args`: the script accepted its arguments."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("arguments parsed")
        self.namespace = namespace


def parsed_arguments(script: Path, arguments: Sequence[str]) -> argparse.Namespace:
    """The arguments a script's argparse parser makes of `arguments`; the script stops right
    after parsing them (it runs nothing). A refused argument is an AssertionError."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(parser, args=None, namespace=None):
        raise ArgumentsParsed(original(parser, args, namespace))

    saved_argv, err = sys.argv, io.StringIO()
    sys.argv = [str(script), *arguments]
    argparse.ArgumentParser.parse_args = parse_and_stop
    try:
        with contextlib.redirect_stderr(err):
            runpy.run_path(str(script), run_name="__main__")
    except ArgumentsParsed as parsed:
        return parsed.namespace
    except SystemExit as error:
        raise AssertionError(f"{script.name} refused {shlex.join(arguments)}: "
                             f"{err.getvalue().strip()} (exit {error.code})") from None
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = saved_argv
    raise AssertionError(f"{script.name} ran without parsing arguments with argparse")


def describe(outcomes: dict) -> str:
    """One line per example: where, what was done, the command, and why it did not run."""
    return "\n".join(f"{where:<18} {outcome.action:<9} {text}"
                     + (f"  [{outcome.detail}]" if outcome.detail else "")
                     for (where, text), outcome in outcomes.items())
