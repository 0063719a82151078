"""What the package promises to install: the notebook's imports come with the `notebook` extra."""

from __future__ import annotations

import ast
import json
import re
import sys

import pytest

from tests.helpers import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

# Modules the `jupyter` metapackage brings (IPython is Jupyter's kernel).
BROUGHT_BY = {"IPython": "jupyter"}


def test_the_notebook_extra_covers_every_import_of_the_notebook():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extra = {re.split(r"[<>=\[ ]", requirement)[0]
             for requirement in project["optional-dependencies"]["notebook"]}
    installed = {re.split(r"[<>=\[ ]", requirement)[0] for requirement in project["dependencies"]}
    notebook = json.loads((REPO / "notebooks" / "compare_runs.ipynb").read_text())
    modules = set()
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            for node in ast.walk(ast.parse("".join(cell["source"]))):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom):
                    modules.add(node.module.split(".")[0])
    needed = {module for module in modules
              if module not in sys.stdlib_module_names and module != "udaseg"}
    assert needed, "the notebook imports plotting and display modules"
    for module in needed:
        assert BROUGHT_BY.get(module, module) in extra | installed, module
