"""Compare runs: mean ± std of mIoU and per-class IoU over the seeds of each configuration.

    udaseg report runs/ --stage test [--per-class] [--format markdown|latex|csv] [--best]
    udaseg report runs/synthetic/advent runs/synthetic/clan --stage val --plots figures/

(`udaseg.runtime.cli` reads the command's options and calls the functions here;
`udaseg.report.plots` draws the figures.)

Reads every `<stage>_metrics.json` under the given folder (a logger's `save_dir`, one run
name's folder of versions, or a single version) and the `config.yaml` next to it. Versions are
seeds of one row only when they share the run name, the command that wrote the metrics (a
training run's last validation is never mixed with an evaluation-only `udaseg validate`), the
iteration count, and the whole config apart from the seed and bookkeeping (logger, callbacks,
checkpoint settings; a start checkpoint from another run counts as that run's name, so the
seeds of a two-stage method, each started from its own seed's first stage, share a row). Rows
of one name that differ are labelled with what differs; a name
whose runs stopped at different iterations is reported on stderr.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from rich.console import Console
from rich.table import Table

from udaseg.report.results import (
    COMMAND_KEY,
    CONFIG_FILE,
    CONFUSION_KEY,
    ITERATION_KEY,
    METRICS_CSV,
    PROVENANCE_KEY,
    metrics_file,
)

#: Config keys that do not make two runs different experiments: the seed, where and how the
#: run is logged or checkpointed, how it is shown, where the weights come from for evaluation.
NOT_THE_EXPERIMENT = ("seed_everything", "data.seed", "trainer.logger", "trainer.callbacks",
                      "trainer.enable_progress_bar", "checkpoint", "snapshots", "preemption",
                      "iou_report", "predictions",
                      "ckpt_path", "config")


@dataclass(frozen=True)
class Run:
    name: str
    command: str
    iteration: int
    config: dict[str, str]          # flattened, bookkeeping removed, values as JSON text
    metrics: dict[str, float]
    folder: Path = Path()           # the version folder (metrics.csv, config.yaml)
    confusion: Optional[list[list[int]]] = None   # rows: ground truth, columns: prediction
    provenance: Optional[dict[str, Any]] = None    # command line, seed, commit, machine
    seed: Optional[int] = None


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists and scalars become JSON text."""
    if isinstance(tree, dict) and tree:
        flat: dict[str, str] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: json.dumps(tree, sort_keys=True, default=str)}


def start_run(value: str) -> str:
    """A start checkpoint that is another udaseg run's (`<name>/<version>/checkpoints/x.ckpt`
    next to that version's config.yaml) stands for that run's name, so two-stage runs whose
    seeds each start from their own seed's stage-1 run are one experiment (CIM from TUFL).
    """
    path = Path(json.loads(value)) if value.startswith('"') else None
    # Result files copied elsewhere (a repository's results/) lack the stage-1 run's folder:
    # a Lightning checkpoint under `<name>/<version>/checkpoints/` names its run all the same.
    if path is not None and path.parent.name == "checkpoints" and \
            ((path.parent.parent / CONFIG_FILE).is_file() or path.suffix == ".ckpt"):
        return json.dumps(f"run:{path.parent.parent.parent.name}")
    return value


def experiment(config: dict) -> dict[str, str]:
    """The settings that make a run's experiment, flat."""
    flat = {key: start_run(value) if key.endswith("init_checkpoint") else value
            for key, value in flatten(config).items()}
    return {key: value for key, value in flat.items()
            if not any(key == skip or key.startswith(skip + ".") for skip in NOT_THE_EXPERIMENT)}


def collect(root: Path, stage: str) -> list[Run]:
    """Every run under `root` with a `<stage>_metrics.json` (an error that says what is there
    instead and what to do when there is none)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: give runs/, one run's folder (e.g. "
                                "runs/synthetic/source_only) or one version of it")
    runs = []
    for path in sorted(root.rglob(metrics_file(stage))):
        version = path.parent
        if version == root:                      # root is one version
            name = root.parent.name
        elif version.parent == root:             # root is one run name's folder of versions
            name = root.name
        else:                                    # root is a save_dir: names may be nested
            name = str(version.parent.relative_to(root))
        metrics = json.loads(path.read_text())
        confusion = metrics.pop(CONFUSION_KEY, None)
        origin = metrics.pop(PROVENANCE_KEY, None) or {}
        config_file = version / CONFIG_FILE
        config = (yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}) or {}
        seed = origin.get("seed", config.get("seed_everything"))
        runs.append(Run(name=name, command=str(metrics.pop(COMMAND_KEY, "fit")),
                        iteration=int(metrics.pop(ITERATION_KEY, -1)),
                        config=experiment(config), metrics=metrics, folder=version,
                        confusion=confusion, provenance=origin,
                        seed=None if seed is None else int(seed)))
    if not runs:
        raise FileNotFoundError(f"no {metrics_file(stage)} under {root}: "
                                f"{missing_stage(root, stage)}")
    return runs


def missing_stage(root: Path, stage: str) -> str:
    """What `root` holds instead of `<stage>` results, and the command that makes them."""
    other = "val" if stage == "test" else "test"
    found = sorted(root.rglob(metrics_file(other)))
    if not found:
        return ("it holds no finished udaseg run (`udaseg fit` writes val_metrics.json when it "
                "ends, `udaseg test` test_metrics.json)")
    version = found[-1].parent
    if stage == "val":
        return (f"found {len(found)} test_metrics.json (e.g. {version}): report them with "
                "--stage test")
    # A run folder is named <benchmark>/<config> after its config: point at that file if here.
    guess = Path("configs", version.parent.parent.name, f"{version.parent.name}.yaml")
    config_text = str(guess) if guess.is_file() else "CONFIG.yaml"
    return (f"found {len(found)} val_metrics.json of training runs (e.g. {version}). Evaluate a "
            f"run on the test split first: udaseg test --config {config_text} --ckpt_path "
            f"{version / 'checkpoints' / 'last.ckpt'}; or report the validation results with "
            "--stage val")


def agrees(config: dict[str, str], other: dict[str, str]) -> bool:
    """Whether two flat configs have the same value for every setting both have."""
    return all(other[key] == value for key, value in config.items() if key in other)


def group(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Row label -> the runs (seeds) of one configuration.

    The CLI saves every option of the version that ran, so a setting missing from a config
    is one a later version added. A run saved before it existed joins the one row whose runs
    agree with it on every setting it has; when several rows do (the setting was varied
    later), which one it belongs to is unknown and it gets a row of its own."""
    rows: list[tuple[tuple, dict[str, str], list[int]]] = []   # (name, command, it), config
    # Runs with the most settings first, so older runs find the rows of newer ones.
    order = sorted(range(len(runs)), key=lambda index: -len(runs[index].config))
    for index in order:
        run = runs[index]
        head = (run.name, run.command, run.iteration)
        same = [row for row in rows if row[0] == head and row[1] == run.config] or \
            [row for row in rows if row[0] == head and agrees(run.config, row[1])]
        if len(same) == 1:
            same[0][2].append(index)
        else:
            rows.append((head, run.config, [index]))
    rows.sort(key=lambda row: min(row[2]))
    labelled: dict[str, list[Run]] = {}
    for head, config, members in rows:
        name, command, iteration = head
        siblings = [other for other in rows if other[0][0] == name and other[0] != head or
                    other[0] == head and other[1] is not config]
        parts = [command] if any(other[0][1] != command for other in siblings) else []
        if any(other[0][2] != iteration for other in siblings):
            parts.append(f"{iteration} it")
        # Config keys that tell this row from rows of the same name, command and iteration.
        differing = sorted({key for other in siblings if other[0] == head
                            for key in set(other[1]) | set(config)
                            if other[1].get(key) != config.get(key)})
        parts += [f"{key.rsplit('.', 1)[-1]}={config.get(key, '-')}" for key in differing[:3]]
        labelled[name + (f" [{', '.join(parts)}]" if parts else "")] = \
            [runs[index] for index in sorted(members)]
    return labelled


def warn_mixed_iterations(runs: Sequence[Run]) -> None:
    by_name: dict[str, set[int]] = {}
    for run in runs:
        by_name.setdefault(run.name, set()).add(run.iteration)
    for name, iterations in by_name.items():
        if len(iterations) > 1:
            print(f"warning: runs under {name!r} stopped at different iterations "
                  f"{sorted(iterations)}; each count is its own row, never averaged",
                  file=sys.stderr)


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def validation_history(run: Run) -> list[tuple[int, dict[str, float]]]:
    """(iteration, metrics) of every validation in the run's metrics.csv (CSV logger), in
    order; [] without one. Lightning logs the validation after iteration i as step i - 1."""
    path = run.folder / METRICS_CSV
    if not path.is_file():
        return []
    with open(path, newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if row.get("val/mIoU")]
    return [(int(float(row["step"])) + 1,
             {key.removeprefix("val/"): float(value) for key, value in row.items()
              if key.startswith("val/") and value != ""}) for row in rows]


def best_validation(runs: Sequence[Run]) -> list[Run]:
    """Each run's validation with the highest mIoU, as a Run (iteration: where it was). Picking
    it looks at target labels: an oracle selection, reported as such."""
    best = []
    for run in runs:
        history = validation_history(run)
        if history:
            iteration, metrics = max(history, key=lambda item: item[1]["mIoU"])
            best.append(Run(run.name, run.command, iteration, run.config, metrics, run.folder))
    return best


def machine(run: Run) -> str:
    """The machine type a result was computed on, as recorded in its file: GPU model, or CPU
    model, logical cores and native bf16 (per-seed values are only comparable within one
    type: kernels round differently). "unrecorded" for result files without provenance."""
    origin = run.provenance or {}
    if origin.get("gpu"):
        return str(origin["gpu"])
    if not origin.get("cpu"):
        return "unrecorded"
    parts = [str(origin["cpu"])]
    if origin.get("cpu_cores"):
        parts.append(f"{origin['cpu_cores']} cores")
    parts.append("native bf16" if origin.get("cpu_native_bf16") else "no native bf16")
    if origin.get("cpu_kernel_limits"):
        parts.append("kernels limited by " + " ".join(origin["cpu_kernel_limits"]))
    return ", ".join(parts)


def commit(run: Run) -> str:
    """The short git commit of the run's result (`+dirty`: uncommitted changes)."""
    origin = run.provenance or {}
    if not origin.get("git_commit"):
        return "unrecorded"
    return str(origin["git_commit"])[:7] + ("+dirty" if origin.get("git_dirty") else "")


def provenance_cells(runs: Sequence[Run]) -> list[str]:
    """The distinct machines and commits of `runs`, in order of appearance."""
    return ["; ".join(dict.fromkeys(map(machine, runs))),
            ", ".join(dict.fromkeys(map(commit, runs)))]


def metric_keys(groups: dict[str, list[Run]], per_class: bool) -> list[str]:
    first = next(iter(groups.values()))[0].metrics
    return [key for key in first if per_class or not key.startswith("IoU/")]


def summarize(groups: dict[str, list[Run]], per_class: bool, best: bool = False,
              provenance: bool = False) -> tuple[list[str], list[list[str]]]:
    """Column names and rows (run, seeds, iterations, metric columns) of the comparison; with
    `best`, each row is followed by its runs' best validations (labelled oracle); with
    `provenance`, machine and commit columns follow the run's name."""
    keys = metric_keys(groups, per_class)
    header = (["run", "seeds", "iterations"] + (["machine", "commit"] if provenance else [])
              + [key.removeprefix("IoU/") for key in keys])

    def row(label: str, members: Sequence[Run]) -> list[str]:
        iterations = sorted({run.iteration for run in members})
        return ([label, str(len(members)), "/".join(map(str, iterations))]
                + (provenance_cells(members) if provenance else [])
                + [mean_std([run.metrics[key] for run in members if key in run.metrics])
                   for key in keys])

    rows = []
    for label, members in groups.items():
        rows.append(row(label, members))
        chosen = best_validation(members) if best else []
        if chosen:
            rows.append(row(f"{label} [best val checkpoint: oracle]", chosen))
    return header, rows


def mean_se(values: Sequence[float]) -> str:
    """Mean ± standard error of the mean ("+1.2 ± 0.4"); the single value for one pair."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:+.1f}"
    error = statistics.stdev(values) / len(values) ** 0.5
    return f"{statistics.mean(values):+.1f} ± {error:.1f}"


def paired_differences(groups: dict[str, list[Run]], baseline: str, per_class: bool,
                       provenance: bool = False) -> tuple[list[str], list[list[str]]]:
    """Each row minus the row labelled `baseline`, seed by seed: the seeds both rows ran
    (`paired seeds`), the difference of each in the first metric (`mIoU per seed`; `mIoU-19
    per seed` where the results name their mIoU so) and, per metric, the mean
    difference ± its standard error over the pairs. Seeds pair only when both results come
    from the same machine type (`machine`); results without a recorded seed never pair.

    The paired difference is what compares methods on few seeds: a seed fixes the data order
    and the initial weights for every method, so seed-to-seed spread that moves all rows
    together cancels.
    """
    if baseline not in groups:
        raise ValueError(f"--paired {baseline}: no row of that name; rows: "
                         f"{', '.join(groups)}")
    reference = {(run.seed, machine(run)): run for run in groups[baseline]
                 if run.seed is not None}
    keys = metric_keys(groups, per_class)
    # mIoU, or the benchmark's own name for it (mIoU-19, mIoU-16, ...)
    primary = next(key for key in keys if not key.startswith("IoU/"))
    header = (["run", "paired seeds", f"{primary} per seed"]
              + (["machine", "commit"] if provenance else [])
              + [key.removeprefix("IoU/") for key in keys])
    rows, unpaired = [], []
    for label, members in groups.items():
        if label == baseline:
            continue
        partners = [(run, reference.get((run.seed, machine(run)))) for run in members]
        pairs = sorted(((run, base) for run, base in partners if base is not None),
                       key=lambda pair: pair[0].seed)
        unpaired += [f"{label} seed {run.seed}" for run, base in partners if base is None]
        if not pairs:
            continue
        per_seed = " / ".join(f"{run.metrics[primary] - base.metrics[primary]:+.2f}"
                              for run, base in pairs)
        seeds = ", ".join(str(run.seed) for run, _ in pairs)
        rows.append([label, seeds, per_seed]
                    + (provenance_cells([run for pair in pairs for run in pair])
                       if provenance else [])
                    + [mean_se([run.metrics[key] - base.metrics[key] for run, base in pairs
                                if key in run.metrics and key in base.metrics])
                       for key in keys])
    if unpaired:
        print(f"note: no {baseline} result of the same seed and machine type for "
              f"{', '.join(unpaired)}: left out of the paired differences", file=sys.stderr)
    return header, rows


def latex_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A booktabs tabular (`\\usepackage{booktabs}`), ± as $\\pm$."""
    def cell(text: str) -> str:
        for character in "\\&%$#_{}":
            text = text.replace(character, "\\" + character)
        return text.replace(" ± ", r" $\pm$ ")

    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(map(cell, header)) + r" \\", r"\midrule"]
    lines += [" & ".join(map(cell, row)) + r" \\" for row in rows]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"])


def render(header: Sequence[str], rows: Sequence[Sequence[str]], form: str,
           title: str) -> None:
    if form == "markdown":
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    elif form == "latex":
        print(latex_table(header, rows))
    elif form == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerows([header, *rows])
    else:
        table = Table(title=title)
        for column in header:
            table.add_column(column, justify="left" if column == "run" else "right",
                             overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
