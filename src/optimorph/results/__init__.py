"""Run directories: config, Parquet metric tables and summaries of training runs; DuckDB queries."""

from optimorph.atomic import (
    atomic_path,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from optimorph.results.rundir import (
    metrics_table,
    query,
    read_config,
    read_run,
    read_summary,
    write_run,
)
from optimorph.results.summary import summarize

__all__ = [
    "atomic_path",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "write_run",
    "read_run",
    "read_config",
    "read_summary",
    "metrics_table",
    "query",
    "summarize",
]
