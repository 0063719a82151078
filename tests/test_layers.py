"""The package's layers: which subpackages may import which, and the deprecated top-level module
paths, which re-export the same objects from their new homes."""

from __future__ import annotations

import ast
import importlib
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "udaseg"

#: Deprecated module path -> its new home.
MOVED = {
    "udaseg.batch_augment": "udaseg.adaptation.batch_augment",
    "udaseg.callbacks.files": "udaseg.runtime.files",
    "udaseg.checkpoint_io": "udaseg.runtime.checkpoint_io",
    "udaseg.cli": "udaseg.runtime.cli",
    "udaseg.cli_errors": "udaseg.runtime.cli_errors",
    "udaseg.compare": "udaseg.report.compare",
    "udaseg.hardware": "udaseg.runtime.hardware",
    "udaseg.inference": "udaseg.evaluation.inference",
    "udaseg.loggers": "udaseg.runtime.loggers",
    "udaseg.metrics": "udaseg.evaluation.metrics",
    "udaseg.plots": "udaseg.report.plots",
    "udaseg.rng_state": "udaseg.runtime.rng_state",
    "udaseg.visualize": "udaseg.report.visualize",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every udaseg module `path` imports, at the top or inside a function
    (`from udaseg.x import y` counts as udaseg.x and udaseg.x.y)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "udaseg" or name.startswith("udaseg.")}


def modules_after_import(*modules: str) -> set[str]:
    """The udaseg modules a fresh interpreter holds after importing `modules`."""
    code = (f"import sys\nfor name in {list(modules)!r}:\n    __import__(name)\n"
            "print(' '.join(name for name in sys.modules if name.startswith('udaseg')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_only_the_cli_brings_in_the_callbacks():
    """Methods, evaluation, report and the runtime modules other than the CLI run without the
    Lightning callbacks package."""
    loaded = modules_after_import(
        "udaseg.methods", "udaseg.evaluation", "udaseg.report", "udaseg.report.compare",
        "udaseg.report.results", "udaseg.report.visualize", "udaseg.runtime",
        *(f"udaseg.runtime.{path.stem}" for path in (PACKAGE / "runtime").glob("*.py")
          if path.stem not in ("__init__", "cli")))
    assert "udaseg.methods" in loaded and "udaseg.runtime.checkpoint_io" in loaded
    assert not [name for name in loaded if within(name, "udaseg.callbacks")]
    for folder in ("methods", "runtime", "evaluation", "report"):
        for path in (PACKAGE / folder).glob("*.py"):
            if path.relative_to(PACKAGE) == Path("runtime/cli.py"):
                continue
            wrong = [name for name in imports(path)
                     if within(name, "udaseg.callbacks") or name in ("udaseg.cli",
                                                                     "udaseg.runtime.cli")]
            assert not wrong, f"{module_name(path)} imports {wrong}"


def test_report_has_no_cycle_and_no_cli():
    """plots builds on compare, never the other way round, and report code never imports the
    command line (the CLI calls report code, and formats the errors it raises)."""
    assert "udaseg.report.plots" not in modules_after_import("udaseg.report.compare")
    assert "udaseg.report.plots" not in imports(PACKAGE / "report" / "compare.py")
    assert "udaseg.report.compare" in imports(PACKAGE / "report" / "plots.py")
    for path in (PACKAGE / "report").glob("*.py"):
        wrong = [name for name in imports(path)
                 if name in ("udaseg.cli", "udaseg.compare", "udaseg.plots")
                 or within(name, "udaseg.runtime.cli") or within(name, "udaseg.callbacks")]
        assert not wrong, f"{module_name(path)} imports {wrong}"


def test_result_file_schema_is_shared_by_writer_and_reader():
    for path in (PACKAGE / "callbacks" / "iou_report.py", PACKAGE / "report" / "compare.py"):
        assert "udaseg.report.results.CONFUSION_KEY" in imports(path), path


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_paths_re_export_the_same_objects(old, new):
    shim, home = importlib.import_module(old), importlib.import_module(new)
    assert shim.__doc__.startswith(f"Deprecated import path, kept for one release: use {new}")
    assert shim.__all__
    results = importlib.import_module("udaseg.report.results")
    for name in shim.__all__:
        origin = results if name == "CONFUSION_KEY" else home
        assert getattr(shim, name) is getattr(origin, name), f"{old}.{name}"


def test_old_report_entry_points_are_the_new_ones():
    import udaseg.compare
    from udaseg.report.results import CONFUSION_KEY
    from udaseg.runtime.cli import report

    assert udaseg.compare.CONFUSION_KEY is CONFUSION_KEY
    assert udaseg.compare.main is report
    from udaseg.compare import main

    assert main is report


def package_imports(module: str) -> bool:
    """Whether the `__init__.py` of `module`'s package imports anything (then importing an old
    path first can run into the package importing that old path back, half initialised)."""
    init = REPO.joinpath(*module.split(".")[:-1], "__init__.py")
    return any(isinstance(node, (ast.Import, ast.ImportFrom))
               for node in ast.parse(init.read_text()).body)


@pytest.mark.parametrize("old", sorted(old for old, new in MOVED.items()
                                       if package_imports(new)))
def test_an_old_path_imports_first_in_a_fresh_interpreter(old):
    assert old in modules_after_import(old)


def test_console_script_and_old_module_commands_run_the_cli(tmp_path, capsys, monkeypatch):
    """pyproject's `udaseg` script is the new CLI; `python -m udaseg.cli` and `python -m
    udaseg.compare` (run here as `-m` runs them) still work."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    script = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["udaseg"]
    module, function = script.split(":")
    assert script == "udaseg.runtime.cli:main"
    assert getattr(importlib.import_module(module), function) is \
        importlib.import_module("udaseg.runtime.cli").main
    for old, arguments, code, stream, expected in (
            ("udaseg.cli", ["--help"], 0, "out", "usage: "),
            ("udaseg.compare", ["--help"], 0, "out", "usage: udaseg report"),
            ("udaseg.compare", [str(tmp_path / "none")], 1, "err", "udaseg report: error: ")):
        monkeypatch.setattr(sys, "argv", [old, *arguments])
        with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_info:
            warnings.simplefilter("ignore", RuntimeWarning)   # "found in sys.modules"
            runpy.run_module(old, run_name="__main__")
        output = getattr(capsys.readouterr(), stream)
        assert exit_info.value.code == code and output.startswith(expected), output
        if code:
            assert len(output.strip().splitlines()) == 1, output
