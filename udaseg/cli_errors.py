"""Deprecated import path, kept for one release: use udaseg.runtime.cli_errors."""

from udaseg.runtime.cli_errors import (
    ERROR_EXIT_CODE,
    JSONARGPARSE_ROOT,
    PACKAGE_ROOT,
    PARSER_NOISE,
    TRACEBACK_VARIABLE,
    USAGE_EXIT_CODE,
    USER_ERROR_TYPES,
    WORKER_ERROR,
    CommandLineError,
    OneLineErrorParser,
    error_line,
    raised_in,
    summarize_parser_error,
    unwrap_worker_error,
    user_error_message,
)

__all__ = ["ERROR_EXIT_CODE", "JSONARGPARSE_ROOT", "PACKAGE_ROOT", "PARSER_NOISE",
           "TRACEBACK_VARIABLE", "USAGE_EXIT_CODE", "USER_ERROR_TYPES", "WORKER_ERROR",
           "CommandLineError", "error_line", "OneLineErrorParser", "raised_in",
           "summarize_parser_error", "unwrap_worker_error", "user_error_message"]
