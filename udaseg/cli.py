"""Deprecated import path, kept for one release: use udaseg.runtime.cli."""

from udaseg.runtime.cli import (
    DATA_FILE_KEYS,
    DESCRIPTION,
    LIGHTNING_CHECKPOINT_NAMES,
    REPORT_HELP,
    SUBCOMMAND_HELP,
    TRAINER_DEFAULTS,
    UNNAMED,
    SaveRunConfig,
    UDASegCLI,
    as_list,
    command_line_configs,
    latest_last_checkpoint,
    main,
    missing_includes,
    run_name,
)

__all__ = ["DATA_FILE_KEYS", "DESCRIPTION", "LIGHTNING_CHECKPOINT_NAMES", "REPORT_HELP",
           "SUBCOMMAND_HELP", "TRAINER_DEFAULTS", "UNNAMED", "as_list", "command_line_configs",
           "latest_last_checkpoint", "main", "missing_includes", "run_name", "SaveRunConfig",
           "UDASegCLI"]

if __name__ == "__main__":
    main()
