"""Where a task's rows and media come from: a hub dataset, or a local copy in the same layout.

A local copy is a directory ``datasets.load_dataset`` reads as it would the hub repository:
parquet (or JSON lines) files, with a README.md whose ``configs:`` names the configs and splits
when there is more than one. Videos are files under a video root: for a local copy the copy
itself, for the hub the folder under ``$HF_HOME`` where lmms-eval unpacks a benchmark's video
archives (``~/.cache/huggingface/videomme`` for Video-MME), or ``--video-dir``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    DatasetFormatError,
    DatasetNotFoundError,
    UnsafeMediaPathError,
    VideosNotFoundError,
)

# Hub errors that mean "not reachable or not there" rather than "bad data".
_MISSING = (FileNotFoundError, ConnectionError, OSError, ValueError)


@dataclass(frozen=True)
class ImageJoin:
    """Images kept in another config of the same dataset, joined by key (GQA)."""

    config: str
    split: str
    key: str  # the row field naming its image
    id_field: str = "id"  # that name's field in the images config
    image_field: str = "image"


@dataclass(frozen=True)
class HubSplit:
    """One split of a hub dataset: the id the community uses, its config and split."""

    hub_id: str
    split: str
    config: str | None = None
    images: ImageJoin | None = None

    @property
    def dirname(self) -> str:
        """The folder name a local copy goes by under ``--data-dir``: the hub name's last part."""
        return self.hub_id.rsplit("/", 1)[-1]


def locate(task: str, split: HubSplit, path: Path | None, data_dir: Path | None) -> Path | None:
    """The local directory of ``task``'s dataset, or None to read the hub (and its cache).

    ``path`` (given for this task) wins; otherwise ``data_dir`` must hold a folder named after
    the hub dataset or the task.
    """
    if path is not None:
        if not path.is_dir():
            raise DatasetNotFoundError(
                f"no dataset for task {task!r} at {path}: not a directory; give a local copy of "
                f"{split.hub_id} in the hub's layout"
            )
        return path
    if data_dir is None:
        return None
    candidates = [data_dir / split.dirname, data_dir / task]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DatasetNotFoundError(
        f"no dataset for task {task!r} under {data_dir}: looked for "
        f"{' and '.join(str(c) for c in candidates)}; put a local copy of {split.hub_id} "
        "(hub layout) there, or pass the task's own path as --tasks NAME=PATH"
    )


_DATA_SUFFIXES = {".parquet", ".arrow", ".json", ".jsonl", ".csv", ".md"}


def _local_cache(location: Path) -> str:
    """A cache folder for a local copy, keyed by its data files' names, sizes and times.

    `datasets` keys a directory with a README ``configs:`` section by that section alone, so an
    edited copy would be read from the stale cache of the old one.
    """
    import datasets

    files = sorted(p for p in location.rglob("*") if p.suffix in _DATA_SUFFIXES and p.is_file())
    stamp = [(str(p.relative_to(location)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(repr((str(location.resolve()), stamp)).encode()).hexdigest()[:16]
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "local" / key)


def load_split(task: str, split: HubSplit, location: Path | None) -> Any:
    """The rows of ``split`` as a `datasets.Dataset` (read lazily: media decode on access)."""
    import datasets

    source = str(location) if location is not None else split.hub_id
    where = f"local copy {location}" if location is not None else f"hub dataset {split.hub_id}"
    cache = _local_cache(location) if location is not None else None
    try:
        return datasets.load_dataset(source, split.config, split=split.split, cache_dir=cache)
    except datasets.exceptions.DatasetGenerationError as error:
        # The reason is in the cause (a parser's message naming the row); the wrapper says none.
        cause = error.__cause__ or error.__context__ or error
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise DatasetFormatError(
            f"the {where} of task {task!r} cannot be read ({reason}); fix or re-download the "
            "file it names"
        ) from None
    except _MISSING as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        config = f", config {split.config!r}" if split.config else ""
        fix = (
            "check that the directory is a copy of the hub repository (data files, README.md "
            "configs)"
            if location is not None
            else "download it where the hub is reachable, then point --data-dir at a copy or "
            "set HF_HOME to the cache that holds it"
        )
        raise DatasetNotFoundError(
            f"cannot load split {split.split!r}{config} of task {task!r} from the {where} "
            f"({reason}); {fix}"
        ) from error


@dataclass
class JoinedImages:
    """Images of another config, looked up by key (built once per run)."""

    join: ImageJoin
    rows: Any
    index: dict[Any, int]

    @classmethod
    def load(
        cls, task: str, split: HubSplit, join: ImageJoin, location: Path | None
    ) -> JoinedImages:
        images = load_split(task, HubSplit(split.hub_id, join.split, join.config), location)
        # Reading only the id column keeps the images themselves undecoded until asked for.
        return cls(join, images, {key: i for i, key in enumerate(images[join.id_field])})

    def image_for(self, row: dict[str, Any]) -> Any:
        key = row[self.join.key]
        if key not in self.index:
            raise KeyError(f"no image with {self.join.id_field}={key!r} in {self.join.config}")
        return self.rows[self.index[key]][self.join.image_field]


@dataclass(frozen=True)
class VideoFiles:
    """Where a video task's files are: ``template`` (a path under the video root, formatted with
    the row) with alternative suffixes, and optional subtitles (same root)."""

    template: str
    cache_name: str  # the folder under $HF_HOME holding the unpacked videos of the hub dataset
    suffixes: tuple[str, ...] = (".mp4", ".MP4", ".mkv")
    subtitles: str | None = None

    def root(self, location: Path | None, video_dir: Path | None) -> Path:
        if video_dir is not None:
            return video_dir
        if location is not None:
            return location
        home = os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface"))
        return Path(home) / self.cache_name

    def candidates(self, root: Path, row: dict[str, Any]) -> list[Path]:
        relative = self.template.format(**row)
        path = root / relative
        # A row names a file under the root, never one elsewhere ("../", an absolute path).
        if Path(relative).is_absolute() or not path.resolve().is_relative_to(root.resolve()):
            raise UnsafeMediaPathError(
                f"a dataset row names the video {relative!r}, which lies outside the video "
                f"folder {root}; refusing to read it: check the dataset copy"
            )
        return [path.with_suffix(suffix) for suffix in self.suffixes]

    def find(self, root: Path, row: dict[str, Any]) -> Path | None:
        return next((p for p in self.candidates(root, row) if p.is_file()), None)

    def subtitle_path(self, root: Path, row: dict[str, Any]) -> Path | None:
        return root / self.subtitles.format(**row) if self.subtitles else None


def check_videos(task: str, files: VideoFiles, root: Path, rows: list[dict[str, Any]]) -> None:
    """Raise `VideosNotFoundError` naming the missing files (and where they were looked for)
    before any sample runs, rather than failing one sample at a time."""
    missing = [files.candidates(root, row)[0] for row in rows if files.find(root, row) is None]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise VideosNotFoundError(
            f"{len(missing)} of {len(rows)} videos of task {task!r} not found under {root} "
            f"(also tried suffixes {', '.join(files.suffixes[1:])}): {shown}; pass --video-dir "
            "DIR holding them as the dataset lays them out"
        )
