"""Append-only JSON-lines files that survive ``kill -9``.

Each row is written with one ``write`` and made durable with ``fsync`` before the next sample
starts, so a crash loses at most the sample in flight. A crash can still leave a torn last line:
readers skip it, and a writer cuts it off before appending, so it is computed again. Under
sharding every process appends to its own part file; the main process merges the parts into
the cell's file once all are done (atomically: a crash mid-merge leaves the parts in place).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def read_rows(path: Path) -> Iterator[Row]:
    """The complete rows of ``path`` (none if it does not exist); a torn line is skipped."""
    if not path.is_file():
        return
    with path.open("rb") as file:
        for line in file:
            if not line.endswith(b"\n"):
                return  # torn by a crash mid-write: the sample runs again
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def _fsync_directory(directory: Path) -> None:
    """Make a file's creation or renaming durable, not only its content."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


class RowWriter:
    """Appends rows to one file, each durable on return."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._cut_torn_line()
        if created:
            _fsync_directory(path.parent)

    def _cut_torn_line(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        # Scan back from the end for the last newline; everything after it is a torn row.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            block = os.pread(self._fd, end - start, start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        if end != size:
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)

    def append(self, row: Row) -> None:
        os.write(self._fd, (json.dumps(row, ensure_ascii=False) + "\n").encode())
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CellFiles:
    """The rows of one (task, policy, budget) cell: ``NAME.jsonl``, plus ``NAME.partKofN.jsonl``
    files while a sharded run is under way."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.name = name
        self.path = directory / f"{name}.jsonl"

    def part(self, rank: int, world: int) -> Path:
        """The file process ``rank`` of ``world`` appends to (the cell's own file when alone)."""
        return (
            self.path if world == 1 else self.directory / f"{self.name}.part{rank}of{world}.jsonl"
        )

    def parts(self) -> list[Path]:
        return sorted(self.directory.glob(f"{self.name}.part*of*.jsonl"))

    def rows(self) -> list[Row]:
        """Every row recorded so far, once per sample (the first record wins), by index."""
        seen: dict[int, Row] = {}
        for path in [self.path, *self.parts()]:
            for row in read_rows(path):
                seen.setdefault(row["index"], row)
        return [seen[i] for i in sorted(seen)]

    def done(self) -> set[int]:
        return {row["index"] for row in self.rows()}

    def merge(self) -> list[Row]:
        """Fold the part files into the cell's file; returns all rows."""
        rows = self.rows()
        parts = self.parts()
        if parts:
            write_atomic(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            for path in parts:
                path.unlink()
        return rows
