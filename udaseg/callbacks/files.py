"""Deprecated import path, kept for one release: use udaseg.runtime.files."""

from udaseg.runtime.files import (
    replace_atomically,
    run_directory,
    write_json_atomic,
    write_png_atomic,
)

__all__ = ["replace_atomically", "run_directory", "write_json_atomic", "write_png_atomic"]
