"""Media: images bounded in pixels, videos sampled by rate and range, decoded chunk by chunk."""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from mmretain.errors import (
    CorruptMediaError,
    EmptyVideoError,
    FrameSamplingError,
    MediaError,
    MediaNotFoundError,
    MediaWarning,
)
from mmretain.media import (
    Video,
    VideoInfo,
    iter_frame_chunks,
    load_image,
    probe_video,
    sample_frame_indices,
    write_video,
)

# decord is optional (no wheels on some platforms); where it is missing this module's
# decord comparisons cannot run, and PyAV alone is tested through the rest of the suite.
decord = pytest.importorskip("decord")

SIZE = 64
FRAMES = 30
FPS = 10.0
FLAT = (200, 30, 60)  # the colour of flat_png images


def frame(i: int) -> np.ndarray:
    """Frame i: noise on top (so every frame costs bytes), below a colour that spells i."""
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[: SIZE // 4] = np.random.default_rng(i).integers(0, 256, (SIZE // 4, SIZE, 3))
    image[SIZE // 4 :, :, 0] = (i % 16) * 16 + 8  # red: the low 4 bits
    image[SIZE // 4 :, :, 1] = (i // 16) * 16 + 8  # green: the high 4 bits
    image[SIZE // 4 :, :, 2] = 128
    return image


def index_of(decoded: np.ndarray) -> int:
    """Read the index back; levels are 16 apart, so a lossy codec's few levels do not matter."""
    flat = decoded[SIZE // 2 :]
    red, green = flat[..., 0].mean(), flat[..., 1].mean()
    return round((red - 8) / 16) + 16 * round((green - 8) / 16)


def read(path: Path, indices: list[int], chunk_frames: int, **kwargs) -> list[np.ndarray]:
    return list(iter_frame_chunks(path, indices, chunk_frames, **kwargs))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """30 frames at 10 fps, 64x64, frame i coloured as frame(i)."""
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    write_video(path, (frame(i) for i in range(FRAMES)), fps=FPS)
    return path


def info(num_frames: int = FRAMES, fps: float = FPS) -> VideoInfo:
    return VideoInfo(Path("v.mp4"), fps, num_frames, num_frames / fps, SIZE, SIZE, "decord")


# ------------------------------------------------------------------------------ sampling


def test_without_rate_every_frame_is_taken():
    assert sample_frame_indices(info()) == list(range(FRAMES))


def test_rate_takes_one_frame_per_period():
    assert sample_frame_indices(info(), fps=2) == [0, 5, 10, 15, 20, 25]
    assert sample_frame_indices(info(), fps=3) == [0, 3, 6, 10, 13, 16, 20, 23, 26]


def test_rate_above_native_takes_each_frame_once():
    assert sample_frame_indices(info(), fps=25) == list(range(FRAMES))


def test_max_frames_spreads_frames_evenly_over_the_range():
    assert sample_frame_indices(info(), max_frames=5) == [3, 9, 15, 21, 27]
    assert sample_frame_indices(info(), fps=5, max_frames=5) == [3, 9, 15, 21, 27]
    assert sample_frame_indices(info(), fps=2, max_frames=6) == [0, 5, 10, 15, 20, 25]


def test_range_covers_frames_on_screen_during_start_to_end():
    assert sample_frame_indices(info(), start=1, end=2) == list(range(10, 20))
    assert sample_frame_indices(info(), fps=2, start=1, end=2) == [10, 15]
    assert sample_frame_indices(info(), start=1.05, end=1.25) == [10, 11, 12]
    assert sample_frame_indices(info(), start=2.5, end=99) == list(range(25, 30))
    assert sample_frame_indices(info(), start=1, end=2, max_frames=2) == [12, 17]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fps": 0}, r"fps must be positive, got 0; pass e\.g\. fps=1"),
        ({"fps": -2.5}, r"fps must be positive, got -2\.5"),
        ({"fps": math.nan}, r"fps must be positive, got nan"),
        ({"max_frames": 0}, r"max_frames must be at least 1, got 0; pass max_frames=None"),
        ({"max_frames": -4}, r"max_frames must be at least 1, got -4"),
        ({"start": 2, "end": 1}, r"end=1 s must be after start=2 s; pass a larger end"),
        ({"start": 1, "end": 1}, r"end=1 s must be after start=1 s"),
        ({"start": 3}, r"start=3 s is at or beyond the end of v\.mp4 \(duration 3 s\); pass a"),
        ({"start": 40, "end": 50}, r"start=40 s is at or beyond the end"),
        ({"start": -1}, r"start must be at least 0 s, got -1; pass start=0"),
    ],
)
def test_bad_sampling_request_names_value_and_fix(kwargs, message):
    with pytest.raises(FrameSamplingError, match=message) as caught:
        sample_frame_indices(info(), **kwargs)
    assert isinstance(caught.value, ValueError)


# ------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_probe_reports_what_was_written(clip, backend):
    assert probe_video(clip, backend=backend) == VideoInfo(
        clip, FPS, FRAMES, FRAMES / FPS, SIZE, SIZE, backend
    )


def test_decord_is_the_default_backend(clip):
    assert probe_video(clip).backend == "decord"


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_chunks_cover_exactly_the_indices_in_order(clip, backend):
    indices = [0, 1, 2, 7, 11, 12, 13, 20, 28, 29]
    chunks = read(clip, indices, 4, backend=backend)
    assert [c.shape for c in chunks] == [(4, SIZE, SIZE, 3), (4, SIZE, SIZE, 3), (2, SIZE, SIZE, 3)]
    assert all(c.dtype == np.uint8 for c in chunks)
    assert [index_of(f) for c in chunks for f in c] == indices


def test_pyav_yields_the_frames_decord_yields(tmp_path):
    """Also across long gaps, where PyAV seeks instead of decoding every frame in between."""
    path = tmp_path / "long.mp4"
    write_video(path, (frame(i) for i in range(250)), fps=FPS)
    for indices in ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [3, 90, 91, 150, 249]):
        by_decord = np.concatenate(read(path, indices, 3, backend="decord"))
        by_pyav = np.concatenate(read(path, indices, 3, backend="pyav"))
        assert [index_of(f) for f in by_pyav] == indices
        assert np.abs(by_decord.astype(int) - by_pyav).max() <= 3


def test_video_bundles_probe_sampling_and_chunks(clip):
    video = Video(clip, fps=2, max_frames=4, start=0.5)
    assert video.info.backend == "decord"
    assert video.indices == [8, 14, 20, 26]
    assert len(video) == 4
    assert video.timestamps == pytest.approx([0.8, 1.4, 2.0, 2.6])
    assert [index_of(f) for c in video.chunks(3) for f in c] == video.indices


def test_decord_decodes_one_batch_per_chunk_consumed(clip, monkeypatch):
    batches = []
    get_batch = decord.VideoReader.get_batch

    def spy(reader, indices):
        batches.append(list(indices))
        return get_batch(reader, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", spy)
    chunks = iter_frame_chunks(clip, list(range(FRAMES)), 8)
    assert batches == []
    next(chunks)
    assert batches == [list(range(8))]
    next(chunks)
    assert batches == [list(range(8)), list(range(8, 16))]


def test_pyav_reads_the_file_only_as_far_as_the_chunk(tmp_path, monkeypatch):
    path = tmp_path / "noise.mp4"
    rng = np.random.default_rng(0)  # noise does not compress: frames spread over the file
    write_video(path, (rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8) for _ in range(300)), 30)
    furthest = 0

    class Tracked(io.FileIO):
        def read(self, size=-1):
            nonlocal furthest
            data = super().read(size)
            furthest = max(furthest, self.tell())
            return data

    opener = av.open
    monkeypatch.setattr(av, "open", lambda file, *a, **k: opener(Tracked(file), *a, **k))
    chunks = iter_frame_chunks(path, list(range(300)), 8, backend="pyav")
    assert len(next(chunks)) == 8
    assert furthest < 0.25 * path.stat().st_size
    assert sum(len(c) for c in chunks) == 292
    assert furthest == path.stat().st_size


def test_write_video_consumes_frames_as_they_come(tmp_path):
    produced = []

    def frames():
        for i in range(5):
            produced.append(i)
            yield frame(i)

    write_video(tmp_path / "v.mkv", frames(), fps=5, codec="mpeg4")
    assert produced == [0, 1, 2, 3, 4]
    assert probe_video(tmp_path / "v.mkv").num_frames == 5


# ------------------------------------------------------------------------------ bad videos


def test_missing_video(tmp_path):
    missing = tmp_path / "x.mp4"
    message = rf"video not found: {missing}; check the path"
    with pytest.raises(MediaNotFoundError, match=message):
        probe_video(missing)
    with pytest.raises(MediaNotFoundError, match=message):
        Video(missing)
    with pytest.raises(MediaNotFoundError, match=message):
        iter_frame_chunks(missing, [0], 4)  # raised on the call, not on the first chunk


def test_text_file_is_not_a_video(tmp_path):
    """decord alone would open this as a one-frame video; the container check refuses it."""
    path = tmp_path / "notes.txt"
    path.write_text("not a video\n" * 20)
    with pytest.raises(CorruptMediaError, match=r"cannot read .*notes\.txt as a video .*MP4"):
        probe_video(path)


def test_image_is_not_a_video(tmp_path):
    path = tmp_path / "cat.png"
    Image.new("RGB", (32, 32)).save(path)
    with pytest.raises(CorruptMediaError, match=r"is an image \(png\), not a video; give it as an"):
        Video(path)


def empty_container(path: Path, codec: str) -> Path:
    """A container with a video stream declared and no frame ever written."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        container.start_encoding()
    return path


def test_video_with_zero_frames(tmp_path):
    path = empty_container(tmp_path / "empty.avi", "mpeg4")
    with pytest.raises(EmptyVideoError, match=r"has a video stream with no frames; re-export"):
        probe_video(path)


def test_mp4_header_without_frames_has_no_video_stream(tmp_path):
    """The MP4 muxer drops a track that got no samples, leaving a header and no stream."""
    path = empty_container(tmp_path / "empty.mp4", "libx264")
    with pytest.raises(CorruptMediaError, match=r"has no video stream \(streams: none\); pass"):
        probe_video(path)


def test_truncated_video_yields_decodable_prefix_then_warns(tmp_path, clip):
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    info = probe_video(cut)
    assert info.backend == "pyav"  # decord refuses the cut file; its index still lists 30
    assert info.num_frames == FRAMES
    with pytest.warns(MediaWarning, match=r"decoded (\d+) of 30 planned frames") as caught:
        chunks = read(cut, list(range(FRAMES)), 8)
    decoded = [index_of(f) for c in chunks for f in c]
    assert 0 < len(decoded) < FRAMES
    assert decoded == list(range(len(decoded)))
    assert f"decoded {len(decoded)} of 30" in str(caught[0].message)


def test_video_cut_before_any_frame_data_raises_when_read(tmp_path, clip):
    data = clip.read_bytes()
    cut = tmp_path / "header_only.mp4"
    cut.write_bytes(data[: data.index(b"mdat") + 4])  # faststart: the index survives, no frames
    chunks = iter_frame_chunks(cut, [0, 1, 2], 2)
    with pytest.raises(CorruptMediaError, match=r"no frame of .* could be decoded \(3 planned\)"):
        next(chunks)


def test_decord_failing_mid_stream_keeps_the_frames_before_the_damage(clip, monkeypatch):
    """A failed batch is retried frame by frame, up to the first frame that fails."""

    def damaged(method):
        def read_frames(reader, which):
            if max(np.atleast_1d(which)) >= 13:
                raise decord.DECORDError("corrupt packet")
            return method(reader, which)

        return read_frames

    monkeypatch.setattr(decord.VideoReader, "get_batch", damaged(decord.VideoReader.get_batch))
    monkeypatch.setattr(decord.VideoReader, "__getitem__", damaged(decord.VideoReader.__getitem__))
    with pytest.warns(MediaWarning, match=r"decoded 13 of 20 planned frames, up to frame 12"):
        chunks = read(clip, list(range(20)), 5)
    assert [len(c) for c in chunks] == [5, 5, 3]
    assert [index_of(f) for c in chunks for f in c] == list(range(13))


def test_forcing_decord_on_a_file_it_cannot_open_suggests_pyav(tmp_path, clip):
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptMediaError, match=r"decord cannot open .*; pass backend='pyav'"):
        probe_video(cut, backend="decord")


@pytest.mark.parametrize(
    ("indices", "chunk_frames", "message"),
    [
        ([3, 2], 4, r"strictly increasing; sort them"),
        ([1, 1], 4, r"strictly increasing"),
        ([0, 30], 4, r"indices 0\.\.30 fall outside .*frames 0\.\.29; sample them"),
        ([-1, 0], 4, r"fall outside"),
        ([0, 1], 0, r"chunk_frames must be at least 1, got 0"),
    ],
)
def test_bad_read_request(clip, indices, chunk_frames, message):
    with pytest.raises(FrameSamplingError, match=message):
        iter_frame_chunks(clip, indices, chunk_frames)


def test_unknown_backend(clip):
    with pytest.raises(MediaError, match=r"unknown video backend 'ffmpeg'; use 'decord', 'pyav'"):
        probe_video(clip, backend="ffmpeg")


@pytest.mark.parametrize(
    ("frames", "fps", "message"),
    [
        ([], 10, r"no frames to write"),
        (
            [np.zeros((64, 64), np.uint8)],
            10,
            r"frames must be RGB arrays \[H, W, 3\], got \(64, 64\)",
        ),
        ([np.zeros((63, 64, 3), np.uint8)], 10, r"64x63; yuv420p video needs even width"),
        ([frame(0), np.zeros((64, 64, 3), np.float32)], 10, r"frame 1 is float32 \(64, 64, 3\)"),
        ([frame(0)], 0, r"fps must be positive, got 0"),
    ],
)
def test_write_video_refuses_bad_frames(tmp_path, frames, fps, message):
    with pytest.raises(MediaError, match=message):
        write_video(tmp_path / "v.mp4", frames, fps=fps)


# ------------------------------------------------------------------------------ images


def test_image_from_path_bytes_and_pil(tmp_path):
    original = Image.new("L", (40, 30), 90)
    path = tmp_path / "gray.png"
    original.save(path)
    for source in (path, str(path), path.read_bytes(), original):
        image = load_image(source)
        assert (image.mode, image.size, image.getpixel((5, 5))) == ("RGB", (40, 30), (90,) * 3)
    assert original.mode == "L"  # the caller's image is left as it was


def test_transparency_becomes_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.new("RGB", (40, 20)).save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_large_jpeg_is_shrunk_within_max_pixels(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(path)
    image = load_image(path, max_pixels=500_000)
    width, height = image.size
    assert width * height <= 500_000
    assert abs(width / height - 4 / 3) < 0.01
    assert np.abs(np.asarray(image).astype(int) - (10, 200, 30)).max() <= 3


def test_missing_image(tmp_path):
    with pytest.raises(MediaNotFoundError, match=r"image not found: .*x\.png; check the path"):
        load_image(tmp_path / "x.png")


def test_file_that_is_not_an_image(tmp_path, clip):
    with pytest.raises(CorruptMediaError, match=r"cannot read .*clip\.mp4 as an image .*JPEG"):
        load_image(clip)
    with pytest.raises(CorruptMediaError, match=r"cannot read image bytes \(5 B\) as an image"):
        load_image(b"hello")


def test_truncated_image(tmp_path):
    path = tmp_path / "cut.png"
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        buffer, "PNG"
    )
    path.write_bytes(buffer.getvalue()[:3000])
    with pytest.raises(CorruptMediaError, match=r"cannot decode .*cut\.png as an image .*short"):
        load_image(path)


def flat_png(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """A PNG of any size in one colour, FLAT, made in about a second (20,000² is 5 MB).

    The pixel data is one compressed row repeated: a full flush makes each copy independent of
    the bytes before it. `rows` writes fewer rows than the header claims.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = height if rows is None else rows
    row = b"\x00" + bytes(FLAT) * width  # filter byte 0, then the pixels
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)  # raw deflate; header and checksum below
    block = deflate.compress(row) + deflate.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(rows):
        checksum = zlib.adler32(row, checksum)
    stream = b"\x78\x01" + block * rows + deflate.flush() + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")
    )
    return path


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_huge_png_is_downscaled_without_exhausting_memory(tmp_path):
    """400 MP: over Pillow's bomb limit. PNG has no draft mode, so decoding costs ~1.6 GB once."""
    path = flat_png(tmp_path / "huge.png", 20_000, 20_000)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS counter
    except OSError:
        pytest.skip("peak RSS cannot be reset on this system")
    before = peak_rss_bytes()
    pillow_limit = Image.MAX_IMAGE_PIXELS
    image = load_image(path)
    # the decoded 1.6 GB, a quarter of it for the box-reduced copy, then the 67 MB result
    assert peak_rss_bytes() - before < 2.5e9
    assert pillow_limit == Image.MAX_IMAGE_PIXELS  # lifted only while opening
    assert image.width * image.height <= 4096 * 4096
    assert image.size == (4096, 4096)
    assert image.getpixel((100, 100)) == FLAT


def test_image_beyond_decode_ceiling_is_refused_before_decoding(tmp_path):
    path = flat_png(tmp_path / "bomb.png", 40_000, 40_000, rows=1)  # header claims 1.6 GP
    with pytest.raises(MediaError, match=r"image too large to decode: .*40000x40000 .*downscale"):
        load_image(path)


def test_bad_max_pixels():
    with pytest.raises(MediaError, match=r"max_pixels must be positive, got 0"):
        load_image(Image.new("RGB", (2, 2)), max_pixels=0)


def test_no_warning_for_a_whole_video(clip):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum(len(c) for c in iter_frame_chunks(clip, range(FRAMES), 7)) == FRAMES


def test_without_decord_pyav_reads_every_video(clip, monkeypatch):
    """decord has no wheel on some platforms; there the same video reads through PyAV."""
    from mmretain import media

    with_decord = Video(clip, fps=2, max_frames=4)
    expected = np.concatenate(list(with_decord.chunks(2)))
    monkeypatch.setattr(media, "decord", None)
    video = Video(clip, fps=2, max_frames=4)
    assert video.info.backend == "pyav" and video.indices == with_decord.indices
    assert np.abs(np.concatenate(list(video.chunks(2))).astype(int) - expected).max() <= 3
    with pytest.raises(MediaError, match="needs decord, which is not installed"):
        probe_video(clip, backend="decord")
