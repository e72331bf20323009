"""An lmms-eval model that runs any lmms-eval task under a KV budget.

Installed with ``pip install 'mmretain[lmms]'``, it registers itself through the
``lmms_eval.models`` entry point, so lmms-eval finds it by name::

    lmms-eval --model mmretain --model_args pretrained=DIR,policy=global,budget=0.1 \\
        --tasks videomme --output_path OUT

It is a chat model (``generate_until``): each request's messages go to `RetainedVLM` — a video
is streamed through the retained cache chunk by chunk (`RetainedVLM.answer_video`), images and
text are answered with `RetainedVLM.chat` — so a task is answered exactly as ``mmretain eval``
answers it. lmms-eval scores the replies itself. What the cache held for every request is
written beside lmms-eval's own output, to ``OUT/<model>/<time>_mmretain_retention.jsonl``
(``stats=PATH`` names another file).

model_args: ``pretrained`` (a checkpoint directory, a hub id, or ``testbed``), ``fps`` and
``max_frames`` (frame sampling), ``chunk_frames`` (frames prefilled between evictions),
``dtype``, ``device``, ``stats``, and any `RetentionConfig` field: ``policy``, ``budget``
(tokens, a fraction of the prompt, or bytes such as ``512MiB``), ``allocation``, ``sink``,
``recent``, ``chunk_tokens``, ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..api import Answer, load
from ..command import USER_ERRORS, real, whole
from ..config import RetentionConfig
from ..defaults import AUTO, DEFAULT_BUDGET
from ..errors import ConfigError, MediaError
from .runner import retention_fields

try:
    from lmms_eval.api.model import lmms
except ImportError as error:  # the plugin is an optional extra
    raise ConfigError(
        "mmretain's lmms-eval model needs lmms-eval; install it with pip install 'mmretain[lmms]'"
    ) from error

MODEL_ID = "mmretain"


def manifest() -> Any:
    """The ``lmms_eval.models`` entry point: this module's model, registered as a chat model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, chat_class_path=f"{__name__}.RetainedLMM")


class RetainedLMM(lmms):
    """lmms-eval's chat-model interface over `mmretain.load` (see the module docstring)."""

    is_simple = False

    def __init__(
        self,
        pretrained: str = "testbed",
        policy: str = AUTO,
        budget: int | float | str = DEFAULT_BUDGET,
        fps: float = 1.0,
        max_frames: int | None = None,
        chunk_frames: int = 16,
        dtype: str = "auto",
        device: str | None = None,
        stats: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,  # lmms-eval passes it to every model; unused here
        **options: Any,
    ) -> None:
        super().__init__()
        try:
            if str(batch_size) != "1":
                raise ConfigError(
                    f"the mmretain model answers one request at a time, got --batch_size "
                    f"{batch_size}; leave --batch_size at 1"
                )
            # Any other model_arg is a RetentionConfig field (allocation, sink, recent, ...).
            fields = {field.name for field in dataclasses.fields(RetentionConfig) if field.init}
            unknown = sorted(set(options) - fields)
            if unknown:
                raise ConfigError(
                    f"unknown model_args {', '.join(unknown)}; the mmretain model takes "
                    "pretrained, fps, max_frames, chunk_frames, dtype, device, stats and the "
                    f"RetentionConfig fields {', '.join(sorted(fields))}"
                )
            # Checked before the model loads: lmms-eval hands them over as it parsed them.
            self.fps = _model_arg("fps", fps, real(0, above=True))
            self.max_frames = (
                None if max_frames is None else _model_arg("max_frames", max_frames, whole(1))
            )
            self.chunk_frames = _model_arg("chunk_frames", chunk_frames, whole(1))
            self.vlm = load(
                str(pretrained),
                policy=policy,
                budget=budget,
                device_map=device,
                dtype=dtype,
                **options,
            )
            self.batch_size = 1
            self.stats_path = Path(stats) if stats else _beside_results(str(pretrained))
        except USER_ERRORS as error:
            # lmms-eval catches every Exception raised while it builds the model, prints its
            # traceback and exits 0; SystemExit passes through: one line and exit code 2.
            print(f"{MODEL_ID}: error: {error}", file=sys.stderr)
            raise SystemExit(2) from error

    def generate_until(self, requests: list[Any]) -> list[str]:
        """One reply per request, in order; each request's retention stats are recorded."""
        replies = []
        for request in requests:
            _, to_messages, generation, doc_id, task, split = request.args
            messages = to_messages(self.task_dict[task][split][doc_id])
            start = time.perf_counter()
            answer = self._answer(messages, dict(generation))
            reply = _cut(answer.text, generation.get("until"))
            self._record(task, doc_id, answer, time.perf_counter() - start)
            replies.append(reply)
        return replies

    def _answer(self, messages: list[dict[str, Any]], generation: dict[str, Any]) -> Answer:
        if generation.get("do_sample") or generation.get("num_beams", 1) > 1:
            raise ConfigError(
                "the mmretain model decodes greedily; this task asks for sampling or beam "
                f"search ({generation}); set do_sample to false and num_beams to 1"
            )
        tokens = int(generation.get("max_new_tokens") or 128)
        videos = [part["url"] for part in _parts(messages, "video")]
        if not videos:
            chat = [
                {
                    "role": message["role"],
                    "content": [_to_chat_part(part) for part in message["content"]],
                }
                for message in messages
            ]
            self.vlm.reset()
            return self.vlm.chat(chat, max_new_tokens=tokens)
        if len(videos) > 1 or _parts(messages, "image") or not isinstance(videos[0], str):
            raise MediaError(
                "the mmretain model takes one video file per request (or only images); this "
                f"request has {len(videos)} video(s), {len(_parts(messages, 'image'))} image(s)"
            )
        question = "\n".join(part["text"] for part in _parts(messages, "text"))
        return self.vlm.answer_video(
            videos[0],
            question,
            fps=self.fps,
            max_frames=self.max_frames,
            chunk_frames=self.chunk_frames,
            max_new_tokens=tokens,
        )[0]

    def _record(self, task: str, doc_id: int, answer: Answer, seconds: float) -> None:
        if self.stats_path is None:
            return
        row = {
            "task": task,
            "doc_id": doc_id,
            "policy": self.vlm.run.policy.name,
            "budget": str(self.vlm.config.parsed_budget),
            **retention_fields(answer.stats),
            "seconds": round(seconds, 3),
        }
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        with self.stats_path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        raise ConfigError(
            "the mmretain model only generates; choose a task whose output_type is generate_until"
        )

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise ConfigError(
            "the mmretain model answers single-round tasks; choose a task whose output_type is "
            "generate_until"
        )


def _model_arg(name: str, value: Any, parse: Callable[[str], Any]) -> Any:
    """``value`` as ``parse`` reads its text (lmms-eval passes numbers or strings), or a
    `ConfigError` naming the model_arg."""
    try:
        return parse(str(value))
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"model_args {name}: {error}") from None


def _parts(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [part for message in messages for part in message["content"] if part["type"] == kind]


def _to_chat_part(part: dict[str, Any]) -> dict[str, Any]:
    """An lmms-eval content part ({"type", "url" | "text"}) as `RetainedVLM.chat` takes it."""
    if part["type"] == "text":
        return {"type": "text", "text": part["text"]}
    if part["type"] == "image":
        return {"type": "image", "image": part["url"]}
    raise MediaError(f"the mmretain model takes images, videos and text, not {part['type']}")


def _cut(text: str, until: Any) -> str:
    """``text`` up to the first of lmms-eval's stop strings."""
    for stop in [until] if isinstance(until, str) else until or ():
        if stop:
            text = text.split(stop, 1)[0]
    return text


def _beside_results(pretrained: str) -> Path | None:
    """Where lmms-eval writes this run's results (``--output_path`` on its command line, in the
    folder it names after the model), or None when it writes none."""
    args = sys.argv[1:]
    out = None
    for i, arg in enumerate(args):
        if arg == "--output_path" and i + 1 < len(args):
            out = args[i + 1]
        elif arg.startswith("--output_path="):
            out = arg.split("=", 1)[1]
    if out is None:
        return None
    from lmms_eval.utils import sanitize_model_name

    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    return Path(out) / sanitize_model_name(pretrained) / f"{stamp}_mmretain_retention.jsonl"
