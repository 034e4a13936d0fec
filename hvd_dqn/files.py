"""A run's files, written all or nothing and read back in one place."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: str | bytes | memoryview, durable: bool = False) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one:
    a temporary name beside it, then a rename. `durable`: fsync before the rename (a
    checkpoint's files). A failed write (a full disk) leaves no temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def read_rows(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The rows of `run_dir/metrics.jsonl` (of `kind`, train or eval, if given), in
    order; [] when there is no file yet."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if kind is None or row["kind"] == kind]
