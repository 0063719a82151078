"""notebooks/compare_runs.ipynb runs on a tiny run (its code cells, in order, headless) and
draws the comparison figures."""

from __future__ import annotations

import json

import matplotlib

from tests.helpers import REPO, write_config
from udaseg.runtime.cli import main


def test_the_comparison_notebook_runs_on_a_tiny_run(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, max_steps=3)
    main(["fit", "--config", str(config), "--trainer.callbacks+=udaseg.callbacks.EntropyMaps"])
    capsys.readouterr()
    monkeypatch.setenv("UDASEG_RUNS", str(tmp_path / "runs"))
    matplotlib.use("Agg")                 # plt.show() draws nothing, nowhere
    notebook = json.loads((REPO / "notebooks" / "compare_runs.ipynb").read_text())
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "compare_runs.ipynb", "exec"), namespace)
    table = capsys.readouterr().out
    assert "| tiny | 1 | 3 |" in table and "| tiny [best val checkpoint: oracle] | 1 |" in table
    assert [path.name for path in namespace["figures"]] == [
        "val_miou_curves.png", "val_iou_per_class.png", "val_confusion_tiny.png"]
    assert all(path.is_file() for path in namespace["figures"])
    assert len(namespace["entropy_figures"]) == 1
