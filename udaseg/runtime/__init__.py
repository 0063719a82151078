"""Running udaseg: the `udaseg` command (`cli`) and what a run needs around the method: its
one-line errors (`cli_errors`), checkpoint files (`checkpoint_io`), the CSV logger (`loggers`),
random generator states (`rng_state`), the CPU's precision support (`hardware`) and atomic
file writes in the run's folder (`files`).

Nothing is imported here: `cli` brings every layer (callbacks, methods, data), while the
other modules are small and are imported by the methods themselves.
"""
