"""Write the small local datasets the evaluation tests read, in the layout of their hub datasets.

    python tests/data/eval/build.py

- ``vqav2/``: 6 rows of lmms-lab-encoder/VQAv2's validation split (question_id, question, image,
  answers as 10 dicts, ...), parquet under ``data/`` as on the hub.
- ``videomme/``: 3 rows of lmms-eval/Video-MME's test split (two questions on one video, one on
  another), parquet under ``videomme/`` as on the hub, with the videos under ``data/`` and a
  subtitle file under ``subtitle/`` where lmms-eval unpacks them.

Everything is drawn from fixed seeds, so rebuilding gives the same content.
"""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw

from mmretain.media import write_video

HERE = Path(__file__).parent
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}
SHAPES = ("circle", "square")


def _card(colour: str, shape: str) -> bytes:
    """A 112 x 112 PNG: one shape on white (16 visual tokens for the tiny Qwen2-VL)."""
    image = Image.new("RGB", (112, 112), "white")
    draw = ImageDraw.Draw(image)
    box = (28, 28, 84, 84)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _readme(split: str, pattern: str) -> str:
    return (
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        f"  - split: {split}\n    path: {pattern}\n---\n"
    )


def build_vqav2(root: Path) -> None:
    rows = []
    cards = [(c, s) for c in COLOURS for s in SHAPES]
    for i, (colour, shape) in enumerate(cards):
        question = "what colour is the shape ?" if i % 2 == 0 else "what shape is it ?"
        truth = colour if i % 2 == 0 else shape
        # Ten annotators, not all agreeing, as in VQAv2.
        said = [truth] * 8 + ["yes", f"{truth}."]
        rows.append(
            {
                "question_type": "what color is the" if i % 2 == 0 else "what",
                "multiple_choice_answer": truth,
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                    for k, a in enumerate(said)
                ],
                "image_id": 1000 + i,
                "answer_type": "other",
                "question_id": 1000 * (1000 + i) + i,
                "question": question,
                "image": {"bytes": _card(colour, shape), "path": f"{1000 + i}.png"},
            }
        )
    features = datasets.Features(
        {
            "question_type": datasets.Value("string"),
            "multiple_choice_answer": datasets.Value("string"),
            "answers": [
                {
                    "answer": datasets.Value("string"),
                    "answer_confidence": datasets.Value("string"),
                    "answer_id": datasets.Value("int64"),
                }
            ],
            "image_id": datasets.Value("int64"),
            "answer_type": datasets.Value("string"),
            "question_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "image": datasets.Image(),
        }
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    dataset = datasets.Dataset.from_list(rows, features=features)
    dataset.to_parquet(root / "data" / "validation-00000-of-00001.parquet")
    (root / "README.md").write_text(_readme("validation", "data/validation-*.parquet"))


VIDEOS = {"tinyvid0001": (12, 4.0), "tinyvid0002": (8, 4.0)}  # frames, fps
SUBTITLES = """1
00:00:00,000 --> 00:00:01,500
<font color="white" size=".72c">the red square came first</font>

2
00:00:01,500 --> 00:00:03,000
<font color="white" size=".72c">then a blue circle</font>
"""


def build_videomme(root: Path) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    colours = list(COLOURS.values())
    for number, (name, (frames, fps)) in enumerate(VIDEOS.items()):
        video = np.full((frames, 56, 56, 3), 128, dtype=np.uint8)
        for t in range(frames):  # a square crossing a grey field, changing colour halfway
            x = 4 * t % 40
            video[t, 20:36, x : x + 16] = colours[(number + 2 * t // frames) % len(colours)]
        write_video(root / "data" / f"{name}.mp4", video, fps)
    (root / "subtitle").mkdir(exist_ok=True)
    (root / "subtitle" / "tinyvid0001.srt").write_text(SUBTITLES)
    options = ["A. red.", "B. green.", "C. blue.", "D. yellow."]
    rows = [  # video_id, duration, videoID, question_id, task_type, question, answer
        ("001", "short", "tinyvid0001", "001-1", "Attribute Perception", "what came first ?", "A"),
        ("001", "short", "tinyvid0001", "001-2", "Temporal Reasoning", "which came second ?", "C"),
        ("002", "long", "tinyvid0002", "002-1", "Object Recognition", "what colour is it ?", "B"),
    ]
    records = [
        {
            "video_id": video_id,
            "duration": duration,
            "domain": "Life Record",
            "sub_category": "Daily Life",
            "url": f"https://www.youtube.com/watch?v={video}",
            "videoID": video,
            "question_id": question_id,
            "task_type": task_type,
            "question": question,
            "options": options,
            "answer": answer,
        }
        for video_id, duration, video, question_id, task_type, question, answer in rows
    ]
    (root / "videomme").mkdir(exist_ok=True)
    datasets.Dataset.from_list(records).to_parquet(
        root / "videomme" / "test-00000-of-00001.parquet"
    )
    (root / "README.md").write_text(_readme("test", "videomme/test-*.parquet"))


if __name__ == "__main__":
    build_vqav2(HERE / "vqav2")
    build_videomme(HERE / "videomme")
    print(f"wrote {HERE / 'vqav2'} and {HERE / 'videomme'}")
