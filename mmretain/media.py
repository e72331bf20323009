"""Images and videos in, RGB arrays out, with memory bounded by the chunk, not the file.

Images: `load_image` opens lazily and shrinks to `max_pixels` while decoding where the format
allows it (JPEG draft mode), so a huge photo never materialises at full size.

Videos: `probe_video` reads the container header, `sample_frame_indices` turns a rate, a cap and
a time range into frame indices, and `iter_frame_chunks` decodes those frames a chunk at a time.
decord decodes when it is installed and can open the file; PyAV takes over when it cannot (and can
be forced with ``backend="pyav"``). decord has no wheels on some platforms (macOS arm64): there
PyAV reads everything. `Video` bundles the three steps. `write_video` encodes frames as they come.

A video cut short mid-stream is read up to the damage: the chunks cover a prefix of the planned
indices, a `MediaWarning` says how many frames were decoded, and `CorruptMediaError` is raised
only when no frame at all could be decoded.
"""

from __future__ import annotations

import io
import itertools
import math
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image, ImageOps

from .errors import (
    CorruptMediaError,
    EmptyVideoError,
    FrameSamplingError,
    MediaError,
    MediaNotFoundError,
    MediaWarning,
)

try:
    import decord
except ImportError:  # no wheel for this platform: PyAV reads every video
    decord = None

Backend = Literal["decord", "pyav"]

DEFAULT_MAX_PIXELS = 4096 * 4096
# Largest image decoded at full resolution (after JPEG draft shrinking). Pillow holds RGB as
# 4 bytes a pixel, so this ceiling is about 2.1 GB; a 20,000 x 20,000 PNG (400 MP, ~1.6 GB)
# fits. Formats without draft mode (PNG, WebP, ...) cannot decode smaller than full size.
MAX_DECODE_PIXELS = 2**29
# Modes that resample with a real filter; palette and bilevel images only allow nearest neighbour.
_RESAMPLABLE_MODES = {"L", "LA", "RGB", "RGBA", "I", "F"}
# Pillow's bomb check reads a module global; this lock keeps concurrent loads from restoring
# each other's value out of order.
_PIL_LIMIT_LOCK = threading.Lock()

# Decoding on from the current frame is cheaper than seeking back to a keyframe unless the next
# wanted frame is further ahead than a typical keyframe interval.
_SEEK_GAP_SECONDS = 5.0
# Frame times are products of floats: a frame landing exactly on a boundary must count as inside.
_EPS = 1e-6


# ----------------------------------------------------------------------------------- images


def load_image(
    source: str | Path | bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Load an image as RGB with at most `max_pixels` pixels (aspect ratio kept).

    `source` is a path, the encoded bytes of an image file, or a PIL image (never modified).
    EXIF orientation is applied; transparency is composited onto white.

    JPEG decodes directly at a reduced size. Other formats (PNG, WebP, ...) decode at full size
    before shrinking: about 4 bytes a pixel, so a 20,000 x 20,000 PNG briefly needs ~2 GB.
    Images above `MAX_DECODE_PIXELS` (after JPEG reduction) are refused with `MediaError`.
    """
    if max_pixels < 1:
        raise MediaError(f"max_pixels must be positive, got {max_pixels}; e.g. 4096 * 4096")
    if isinstance(source, Image.Image):
        return _finish(source, max_pixels)
    name = f"image bytes ({len(source)} B)" if isinstance(source, bytes) else str(source)
    with _open_image(source, name) as image:
        _draft(image, max_pixels)
        width, height = image.size
        if width * height > MAX_DECODE_PIXELS:
            raise MediaError(
                f"image too large to decode: {name} is {width}x{height} "
                f"({width * height / 1e6:.0f} MP, limit {MAX_DECODE_PIXELS / 1e6:.0f} MP); "
                "downscale it before loading, or save it as JPEG, which decodes at reduced size"
            )
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise CorruptMediaError(
                f"cannot decode {name} as an image ({error}); the file is damaged or cut short; "
                "re-save or re-download it"
            ) from error
        return _finish(image, max_pixels)


def _open_image(source: str | Path | bytes, name: str) -> Image.Image:
    """Open without decoding: only the header is read, so the size is known before any pixels."""
    if isinstance(source, bytes):
        file: Path | io.BytesIO = io.BytesIO(source)
    else:
        file = _existing_file(source, "image")
    # Pillow refuses images above Image.MAX_IMAGE_PIXELS at open time, before draft mode could
    # shrink them; load_image bounds the decode itself, so the global check is lifted meanwhile.
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(file)
        except (OSError, SyntaxError, ValueError) as error:
            raise CorruptMediaError(
                f"cannot read {name} as an image ({error}); check that it is an image file "
                "such as JPEG, PNG or WebP"
            ) from error
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _draft(image: Image.Image, max_pixels: int) -> None:
    """Ask the decoder for the smallest size still at least the target (JPEG: 1/2 to 1/8)."""
    width, height = image.size
    if width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
        image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))


def _finish(image: Image.Image, max_pixels: int) -> Image.Image:
    """A new RGB image within `max_pixels`, upright as its EXIF orientation says."""
    width, height = image.size
    if width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        if image.mode not in _RESAMPLABLE_MODES:
            image = _to_rgb(image)
        # reducing_gap: box-reduce by an integer factor first, then filter; fast on huge inputs
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    image = _to_rgb(image)
    ImageOps.exif_transpose(image, in_place=True)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB copy; transparent pixels become white rather than whatever colour they hid."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        rgb.info = dict(image.info)
        return rgb
    return image.convert("RGB")


def _existing_file(path: str | Path, kind: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MediaNotFoundError(f"{kind} not found: {path}; check the path (it must name a file)")
    return path


# ----------------------------------------------------------------------------------- videos


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, as the backend that will decode it counts it.

    `duration` is `num_frames / fps`: the span the frame indices cover.
    """

    path: Path
    fps: float
    num_frames: int
    duration: float
    width: int
    height: int
    backend: Backend


def probe_video(path: str | Path, backend: Backend | None = None) -> VideoInfo:
    """Read a video's frame rate, frame count and size from its container, not its pixels.

    decord is used when it can open the file, PyAV otherwise; `backend` forces one. Either may
    scan the file's packets to count frames; nothing is decoded into memory.
    """
    with closing(_open_video(path, backend)) as video:
        return video.info


def sample_frame_indices(
    info: VideoInfo,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
) -> list[int]:
    """Frame indices, increasing, sampled at `fps` over [start, end) seconds, at most `max_frames`.

    The range covers every frame on screen during [start, end); `end` past the video's end is
    clipped. `fps=None`, or a rate at or above the native one, keeps every frame once. When more
    than `max_frames` frames would be taken, `max_frames` are spread evenly over the range.
    """
    if fps is not None and not fps > 0:
        raise FrameSamplingError(
            f"fps must be positive, got {fps}; pass e.g. fps=1 for one frame a second, "
            "or fps=None to keep every frame"
        )
    if max_frames is not None and max_frames < 1:
        raise FrameSamplingError(
            f"max_frames must be at least 1, got {max_frames}; pass max_frames=None for no cap"
        )
    start = 0.0 if start is None else float(start)
    if start < 0:
        raise FrameSamplingError(f"start must be at least 0 s, got {start:g}; pass start=0")
    if start >= info.duration:
        raise FrameSamplingError(
            f"start={start:g} s is at or beyond the end of {info.path} "
            f"(duration {info.duration:g} s); pass a start below {info.duration:g}"
        )
    if end is not None and end <= start:
        raise FrameSamplingError(
            f"end={end:g} s must be after start={start:g} s; pass a larger end, "
            "or end=None to read to the end of the video"
        )
    end = info.duration if end is None else min(float(end), info.duration)

    first = min(math.floor(start * info.fps + _EPS), info.num_frames - 1)
    stop = max(first + 1, min(math.ceil(end * info.fps - _EPS), info.num_frames))
    span = stop - first
    step = 1.0 if fps is None else max(1.0, info.fps / fps)
    offsets = (math.floor(k * step + _EPS) for k in range(math.ceil(span / step)))
    indices = [first + offset for offset in offsets if offset < span]
    if max_frames is not None and len(indices) > max_frames:
        # A lower effective rate: the centres of max_frames equal slices of the whole range.
        indices = [first + (2 * j + 1) * span // (2 * max_frames) for j in range(max_frames)]
    return indices


def iter_frame_chunks(
    path: str | Path,
    indices: Sequence[int],
    chunk_frames: int,
    backend: Backend | None = None,
) -> Iterator[np.ndarray]:
    """Decode the frames at `indices` lazily: uint8 arrays [n, H, W, 3], n <= chunk_frames.

    Only the current chunk is held in memory. The file is opened and the indices are checked
    when this is called; decoding happens as the chunks are consumed. If the file is damaged or
    cut short, the chunks cover the first frames that could be decoded (a prefix of `indices`),
    then a `MediaWarning` gives the count; `CorruptMediaError` if not one frame decoded.
    """
    if chunk_frames < 1:
        raise FrameSamplingError(f"chunk_frames must be at least 1, got {chunk_frames}; e.g. 16")
    indices = [int(i) for i in indices]
    video = _open_video(path, backend)
    try:
        _check_indices(indices, video.info)
    except FrameSamplingError:
        video.close()
        raise
    return _read_chunks(video, indices, chunk_frames)


class Video:
    """A video file and the frames sampled from it, read lazily chunk by chunk.

    >>> video = Video("talk.mp4", fps=1, max_frames=256)
    >>> for frames in video.chunks(16): ...   # uint8 [<=16, H, W, 3]
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | None = None,
        max_frames: int | None = None,
        start: float | None = None,
        end: float | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.info = probe_video(path, backend)
        self.indices = sample_frame_indices(self.info, fps, max_frames, start, end)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def sampled_fps(self) -> float:
        """Frames per second of the sampled frames (the native rate when every frame is kept)."""
        if len(self.indices) < 2:
            return self.info.fps
        return (len(self.indices) - 1) * self.info.fps / (self.indices[-1] - self.indices[0])

    @property
    def timestamps(self) -> list[float]:
        """Seconds from the start of the video of each sampled frame."""
        return [i / self.info.fps for i in self.indices]

    def chunks(self, chunk_frames: int) -> Iterator[np.ndarray]:
        """The sampled frames, `chunk_frames` at a time (see `iter_frame_chunks`)."""
        return iter_frame_chunks(self.info.path, self.indices, chunk_frames, self.info.backend)


def quiet_decoders() -> None:
    """Silence the lines libav prints on stderr for damaged files (through decord and PyAV):
    mmretain reports an unreadable file itself, in one line that says what to do."""
    if decord is not None:
        decord.logging.set_level(decord.logging.QUIET)
    av.logging.set_level(av.logging.PANIC)


def write_video(
    path: str | Path, frames: Iterable[np.ndarray], fps: float, codec: str | None = None
) -> None:
    """Encode uint8 [H, W, 3] RGB frames into a video file, one frame at a time.

    `codec` defaults to libx264 where the installed PyAV has it, else mpeg4; pixels are yuv420p,
    so H and W must be even. MP4/MOV files get their index at the front (faststart), so a copy
    cut short still opens and its surviving frames can be read.
    """
    if not fps > 0:
        raise MediaError(f"fps must be positive, got {fps}; e.g. fps=30")
    codec = codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise MediaError(f"no frames to write to {path}; pass at least one [H, W, 3] uint8 frame")
    first = np.asarray(first)
    if first.ndim != 3 or first.shape[2] != 3:
        raise MediaError(
            f"frames must be RGB arrays [H, W, 3], got {first.shape}; "
            "stack grey frames three times along the last axis"
        )
    height, width = first.shape[:2]
    if height % 2 or width % 2:
        raise MediaError(
            f"frames are {width}x{height}; yuv420p video needs even width and height, "
            "so crop or pad the frames by one pixel"
        )
    path = Path(path)
    options = {"movflags": "faststart"} if path.suffix.lower() in (".mp4", ".m4v", ".mov") else {}
    with av.open(str(path), "w", container_options=options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for number, frame in enumerate(itertools.chain([first], frames)):
            frame = np.asarray(frame)
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise MediaError(
                    f"frame {number} is {frame.dtype} {frame.shape}; every frame must be "
                    f"uint8 ({height}, {width}, 3) like the first"
                )
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the frames the encoder still holds back


def _open_video(path: str | Path, backend: Backend | None) -> _DecordVideo | _PyAVVideo:
    """Open with decord if it can, else PyAV; PyAV always reads the header first to vet the file.

    decord accepts some files that are not videos (a text file opens as one frame), so the
    container format and its video stream are checked with PyAV before any backend is chosen.
    """
    if backend not in (None, "decord", "pyav"):
        raise MediaError(f"unknown video backend {backend!r}; use 'decord', 'pyav' or None")
    path = _existing_file(path, "video")
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise CorruptMediaError(
            f"cannot read {path} as a video ({error}); check that it is a video file such as "
            "MP4, MKV, WebM or AVI, and that it is not damaged or cut short"
        ) from error
    try:
        stream = _video_stream(container, path)
        reader = None if backend == "pyav" else _open_decord(path, required=backend == "decord")
        if reader is None:
            return _PyAVVideo(path, container, stream)
        size = stream.codec_context.width, stream.codec_context.height
    except BaseException:
        container.close()
        raise
    container.close()
    return _DecordVideo(path, reader, *size)


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    name = container.format.name
    if name == "image2" or name.endswith("_pipe"):  # how FFmpeg names single-image formats
        raise CorruptMediaError(
            f"{path} is an image ({name.removesuffix('_pipe')}), not a video; "
            "give it as an image instead (`mmretain chat --image`, or load_image in Python)"
        )
    if not container.streams.video:
        kinds = ", ".join(s.type for s in container.streams) or "none"
        raise CorruptMediaError(
            f"{path} has no video stream (streams: {kinds}); pass a file that contains video"
        )
    return container.streams.video[0]


def _open_decord(path: Path, required: bool) -> decord.VideoReader | None:
    """A decord reader, or None when decord cannot use the file and PyAV should try."""
    if decord is None:
        if required:
            raise MediaError(
                "backend='decord' needs decord, which is not installed here; pass "
                "backend='pyav' or backend=None"
            )
        return None
    try:
        reader = decord.VideoReader(str(path))
        if len(reader) > 0 and reader.get_avg_fps() > 0:
            return reader
        reason = "it finds no frames or no frame rate"
    except (decord.DECORDError, RuntimeError) as error:
        reason = str(error).splitlines()[0][:200]
    if required:
        raise CorruptMediaError(
            f"decord cannot open {path} ({reason}); pass backend='pyav', or backend=None to "
            "fall back to PyAV automatically"
        )
    return None


def _check_indices(indices: list[int], info: VideoInfo) -> None:
    if any(b <= a for a, b in itertools.pairwise(indices)):
        raise FrameSamplingError(
            "frame indices must be strictly increasing; sort them and drop repeats "
            "(sample_frame_indices returns them in this form)"
        )
    if indices and not 0 <= indices[0] <= indices[-1] < info.num_frames:
        raise FrameSamplingError(
            f"frame indices {indices[0]}..{indices[-1]} fall outside {info.path}, which has "
            f"frames 0..{info.num_frames - 1}; sample them with sample_frame_indices(info, ...)"
        )


def _read_chunks(
    video: _DecordVideo | _PyAVVideo, indices: list[int], chunk_frames: int
) -> Iterator[np.ndarray]:
    decoded = 0
    with closing(video):
        for chunk in video.chunks(indices, chunk_frames):
            decoded += len(chunk)
            yield chunk
    path = video.info.path
    if indices and decoded == 0:
        raise CorruptMediaError(
            f"no frame of {path} could be decoded ({len(indices)} planned); the file is "
            "damaged or cut short; re-encode or re-download it"
        )
    if decoded < len(indices):
        warnings.warn(
            MediaWarning(
                f"{path}: decoded {decoded} of {len(indices)} planned frames, up to frame "
                f"{indices[decoded - 1]}; the rest of the file is damaged or cut short, so the "
                f"chunks cover only the first {decoded} indices; re-encode or re-download it "
                "to read it whole"
            ),
            stacklevel=2,
        )


class _DecordVideo:
    """decord backend: random access by frame index, one `get_batch` per chunk."""

    def __init__(self, path: Path, reader: decord.VideoReader, width: int, height: int) -> None:
        self._reader = reader
        fps, frames = float(reader.get_avg_fps()), len(reader)
        self.info = VideoInfo(path, fps, frames, frames / fps, width, height, "decord")

    def chunks(self, indices: list[int], chunk_frames: int) -> Iterator[np.ndarray]:
        shape = (self.info.height, self.info.width, 3)
        for start in range(0, len(indices), chunk_frames):
            wanted = indices[start : start + chunk_frames]
            try:
                batch = self._reader.get_batch(wanted).asnumpy()
            except (decord.DECORDError, RuntimeError):
                batch = self._frames_before_damage(wanted, shape)
            if batch.shape[1:] != shape:
                # decord pads the rows of some frame widths (2, 16, 48 or 72 pixels, among
                # others) and hands the padding back as channels; PyAV reads them as they are.
                with closing(_open_video(self.info.path, "pyav")) as video:
                    yield from video.chunks(indices[start:], chunk_frames)
                return
            if len(batch):
                yield batch
            if len(batch) < len(wanted):
                return

    def _frames_before_damage(self, wanted: list[int], shape: tuple[int, ...]) -> np.ndarray:
        """A batch fails as a whole; keep the frames before the damage, one at a time."""
        good = []
        for index in wanted:
            try:
                good.append(self._reader[index].asnumpy())
            except (decord.DECORDError, RuntimeError):
                break
        return np.stack(good) if good else np.empty((0, *shape), np.uint8)

    def close(self) -> None:
        self._reader = None  # decord frees its demuxer and decoder with the last reference


class _PyAVVideo:
    """PyAV backend: decodes forward in display order, seeking only across long gaps."""

    def __init__(
        self, path: Path, container: av.container.InputContainer, stream: av.VideoStream
    ) -> None:
        self._container, self._stream = container, stream
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise CorruptMediaError(
                f"{path}: the video stream has no frame rate; re-encode it at a fixed rate"
            )
        fps = float(rate)
        # Some containers (Matroska, WebM) do not store a frame count: count packets instead,
        # which reads the file once but decodes nothing.
        frames = stream.frames or _count_packets(path)
        if frames == 0:
            raise EmptyVideoError(
                f"{path} has a video stream with no frames; re-export the video with its frames"
            )
        width, height = stream.codec_context.width, stream.codec_context.height
        self.info = VideoInfo(path, fps, frames, frames / fps, width, height, "pyav")
        self._start_pts = stream.start_time or 0
        self._seek_gap = max(1, round(_SEEK_GAP_SECONDS * fps))

    def chunks(self, indices: list[int], chunk_frames: int) -> Iterator[np.ndarray]:
        frames = self._frames_at(indices)
        shape = (self.info.height, self.info.width, 3)
        for start in range(0, len(indices), chunk_frames):
            size = min(chunk_frames, len(indices) - start)
            chunk = np.empty((size, *shape), np.uint8)  # filled in place: one chunk, no list
            filled = 0
            for frame in itertools.islice(frames, size):
                chunk[filled] = frame
                filled += 1
            if filled:
                yield chunk[:filled]
            if filled < size:
                return

    def close(self) -> None:
        self._container.close()

    def _frames_at(self, targets: list[int]) -> Iterator[np.ndarray]:
        """The frame on screen at each target index, in order; stops where decoding stops."""
        decoded: Iterator[tuple[int, av.VideoFrame]] | None = None
        position, frame = -1, None
        for target in targets:
            if decoded is None or target - position > self._seek_gap:
                decoded = self._decode_from(target)
            while position < target:
                item = next(decoded, None)
                if item is None:
                    return
                position, frame = item
            yield frame.to_ndarray(format="rgb24")

    def _decode_from(self, target: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """Seek to the keyframe at or before `target`, then yield (index, frame) onwards."""
        time_base, fps = self._stream.time_base, self.info.fps
        pts = self._start_pts + math.floor(target / fps / time_base)
        self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        index = -1
        try:
            for frame in self._container.decode(self._stream):
                # The index comes from the timestamp, so it stays right after a seek.
                if frame.pts is None:
                    index += 1
                else:
                    index = round((frame.pts - self._start_pts) * time_base * fps)
                yield index, frame
        except av.FFmpegError:
            return  # damaged or cut short: the frames end here and the caller reports it


def _count_packets(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(packet.size > 0 for packet in container.demux(video=0))
