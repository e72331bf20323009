"""Question-to-frame relevance with open_clip: which chunks to stream, and a prior on video entries.

A CLIP model (Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", arXiv:2103.00020; the open_clip implementation) embeds the question once and the
video's frames chunk by chunk as they are read, keeping one cosine similarity per frame, so
memory does not grow with the video beyond that one float a frame. The scores serve twice:

- **Retrieval** (as Goldfish answers over long videos from the clips the question retrieves:
  Ataallah et al., arXiv:2407.12679): with the question known, only the ``retrieve`` chunks
  that score highest, plus a thin uniform sample of ``context_frames`` frames, are streamed
  through the VLM, so its cost follows the frames chosen, not the video's length.
- **A prior** on video entries (`RelevancePrior`), under any policy, ``global`` included.

How the prior stays calibrated across heads and layers: the policy's scores of one eviction are
first put on one scale, the quantile of each entry in the ranking of *all* its row's entries
(every layer, head and position; for a policy whose scores share no scale across heads, of its
rank-normalised scores, as the engine would rank them). That map is monotone, so it keeps the
policy's own global order, and it puts every entry on [0, 1], the scale of the relevance
(min-max normalised over the streamed frames: the most relevant frame 1, the least 0). A video
entry then scores ``quantile + weight * relevance``; text and generated entries get no term.
So ``weight`` reads as a share of the whole ranking: at 1.0 the most relevant frame's entries
rank with the policy's best whatever their own score, and at 0 the ranking is the policy's own.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .defaults import MAX_PRIOR
from .errors import ConfigError, ModelLoadError
from .policies.base import LayerView, RetentionPolicy
from .shipped import clip_path
from .tags import Modality

if TYPE_CHECKING:
    from .cache import RetentionCache
    from .media import Video

TESTBED_CLIP = "testbed-clip"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONFIG_FILE = "open_clip_config.json"
# open_clip config fields that make it fetch from a hub (a Hugging Face text tower, timm's
# pretrained vision weights); a tokenizer by hub name too, unless it is saved beside a local
# config (open_clip then reads it from there).
HUB_FIELDS = (("text_cfg", "hf_model_name"), ("vision_cfg", "timm_model_pretrained"))
HUB_TOKENIZER = ("text_cfg", "hf_tokenizer_name")


@dataclass(frozen=True)
class Relevance:
    """What question-to-frame relevance does in a run (`RetentionConfig.relevance`).

    Args:
        model: an open_clip model: ``"testbed-clip"`` (shipped, default), a directory holding
            ``open_clip_config.json`` and safetensors weights, or an open_clip architecture
            name (``"ViT-B-32"``) whose weights ``pretrained`` gives.
        pretrained: a ``.safetensors`` file, or a directory holding one, for an architecture
            name; pickled checkpoints (.bin, .pt) are refused.
        prior: weight of the relevance prior on video entries (0: none). See the module doc.
        retrieve: chunks of ``chunk_frames`` frames to stream, those most relevant to the
            question (0: stream the whole video).
        context_frames: with ``retrieve``, frames sampled uniformly from the rest of the video
            and streamed too, for context.
        batch_frames: frames embedded per CLIP forward.
    """

    model: str = TESTBED_CLIP
    pretrained: str | None = None
    prior: float = 0.0
    retrieve: int = 0
    context_frames: int = 8
    batch_frames: int = 32

    def __post_init__(self) -> None:
        prior = self.prior
        # Written so that nan fails too; inf and huge weights overflow the float32 scores.
        if (
            isinstance(prior, bool)
            or not isinstance(prior, (int, float))
            or not 0 <= prior <= MAX_PRIOR
        ):
            raise ConfigError(
                f"relevance prior must be a weight >= 0 and <= {MAX_PRIOR:g}, got {prior!r}; "
                "1.0 ranks the most relevant frames with the policy's best entries"
            )
        for name, low in (("retrieve", 0), ("context_frames", 0), ("batch_frames", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"relevance {name} must be a whole number >= {low}, got {value!r}"
                )
        if not self.prior and not self.retrieve:
            raise ConfigError(
                "relevance with prior=0 and retrieve=0 does nothing; give prior=1.0 (rank video "
                "entries by the question) or retrieve=N (stream the N most relevant chunks)"
            )


def load_clip(model: str, pretrained: str | Path | None = None) -> tuple[Any, Any, Any]:
    """An open_clip model (eval mode), its image preprocessing and its tokenizer, offline.

    Weights load from safetensors only; a pickled checkpoint raises `ModelLoadError`. Nothing
    is fetched from a hub: a model whose config needs a hub text tower, tokenizer or weights is
    refused, naming the field, before anything is built.
    """
    import open_clip

    if model == TESTBED_CLIP:
        model = str(clip_path())
    if model.startswith("hf-hub:"):
        raise ConfigError(
            f"open_clip model {model!r} is a hub name; mmretain loads offline: download the "
            f"folder (with {CONFIG_FILE} and safetensors weights) and give its path"
        )
    directory = Path(model).expanduser()
    if directory.is_dir():
        if pretrained is not None:
            raise ConfigError(
                f"{model} is a model directory, which brings its own weights; drop pretrained"
            )
        name, weights = f"local-dir:{directory}", _safetensors_in(directory)
        _refuse_hub_fields(_local_config(directory), f"{directory / CONFIG_FILE}", HUB_FIELDS)
    else:
        if pretrained is None:
            raise ConfigError(
                f"open_clip architecture {model!r} needs its weights: give pretrained=FILE "
                "(.safetensors) or a directory holding one"
            )
        name, weights = model, _safetensors_in(Path(pretrained).expanduser())
        config = open_clip.get_model_config(model) or {}  # unknown names fail below, in one line
        where = f"open_clip's config of {model!r}"
        _refuse_hub_fields(config, where, (*HUB_FIELDS, HUB_TOKENIZER))
    try:
        # Weights load below, from the safetensors file checked above; open_clip's own loader
        # could take a pickle from the directory, and warns of a random model while it is one.
        with _quiet_root_logger():
            clip, _, preprocess = open_clip.create_model_and_transforms(name, load_weights=False)
        _check_fits(clip, weights, model)
        open_clip.load_checkpoint(clip, str(weights))
        tokenizer = open_clip.get_tokenizer(name)
    except ModelLoadError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(
            f"cannot load open_clip model {model!r} with weights {weights} ({reason}); give a "
            f"directory with open_clip_config.json, or an architecture from "
            "open_clip.list_models() and its safetensors weights"
        ) from error
    return clip.eval(), preprocess, tokenizer


def _local_config(directory: Path) -> dict[str, Any]:
    """The ``model_cfg`` of a model directory's open_clip config."""
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text())["model_cfg"]
        if not isinstance(config, dict):
            raise TypeError("model_cfg is not a JSON object")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(
            f"{path} cannot be read as an open_clip config ({error}); a model directory holds "
            f"{CONFIG_FILE} with a model_cfg object, as open_clip saves it"
        ) from None
    return config


def _refuse_hub_fields(
    config: dict[str, Any], where: str, fields: tuple[tuple[str, str], ...]
) -> None:
    """Raise `ConfigError` naming the first of ``fields`` that would make open_clip fetch from a
    hub."""
    for tower, field in fields:
        value = (config.get(tower) or {}).get(field)
        if value:
            raise ConfigError(
                f"{where} sets {tower}.{field} = {value!r}, which open_clip fetches from a hub; "
                "mmretain loads offline: use a model whose towers and tokenizer are open_clip's "
                "own, or a folder that holds them"
            )


def _check_fits(clip: torch.nn.Module, weights: Path, model: str) -> None:
    """Raise `ModelLoadError` unless ``weights`` is a safetensors file holding every tensor of
    ``clip`` in its shape (read from its header alone)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(weights, "pt") as tensors:
            shapes = {key: tuple(tensors.get_slice(key).get_shape()) for key in tensors.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(
            f"{weights} is not a safetensors file ({error}); mmretain loads no pickled "
            "checkpoint: give the model's .safetensors weights"
        ) from None
    # open_clip's loader adds a zero logit_bias to weights saved without one.
    expected = {k: tuple(v.shape) for k, v in clip.state_dict().items() if k != "logit_bias"}
    unfit = [k for k, shape in expected.items() if shapes.get(k) != shape]
    if unfit:
        found = ", ".join(f"{k} {shapes.get(k, 'missing')} for {expected[k]}" for k in unfit[:2])
        raise ModelLoadError(
            f"the weights {weights} do not fit open_clip model {model!r} ({len(unfit)} tensors "
            f"differ, e.g. {found}); give the weights saved from this architecture"
        )


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip logs on the root logger; its warnings during a load mmretain checks itself
    would only mislead."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _safetensors_in(path: Path) -> Path:
    """The safetensors weights ``path`` names or holds; pickles are refused unread."""
    if path.is_file():
        if path.suffix == ".safetensors":
            return path
        raise ModelLoadError(
            f"{path} is not a .safetensors file; mmretain loads no pickled checkpoint (it can run "
            "code): convert it once where you trust it, e.g. `safetensors.torch.save_file("
            "torch.load(FILE, weights_only=True), 'open_clip_model.safetensors')`"
        )
    if not path.is_dir():
        raise ModelLoadError(f"no weights at {path}; give a .safetensors file or its directory")
    found = sorted(path.glob("*.safetensors"))
    if not found:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        held = f" (it holds only pickles: {', '.join(pickles)})" if pickles else ""
        raise ModelLoadError(
            f"no .safetensors weights in {path}{held}; mmretain loads no pickled checkpoint: "
            "convert it with `safetensors.torch.save_file(torch.load(FILE, weights_only=True), "
            "'open_clip_model.safetensors')`"
        )
    preferred = [p for p in found if p.name == "open_clip_model.safetensors"]
    return (preferred or found)[0]


class RelevanceScorer:
    """Scores frames against a question with an open_clip model, a batch of frames at a time."""

    def __init__(self, relevance: Relevance, device: str | torch.device = "cpu"):
        self.relevance = relevance
        self.device = torch.device(device)
        self.model, self.preprocess, self.tokenizer = load_clip(
            relevance.model, relevance.pretrained
        )
        self.model.to(self.device)

    @torch.inference_mode()
    def embed_question(self, question: str) -> torch.Tensor:
        """The question's unit-norm text embedding [d]."""
        tokens = self.tokenizer([question]).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)[0]

    @torch.inference_mode()
    def score_frames(self, chunks: Iterable[np.ndarray], question: str) -> torch.Tensor:
        """Cosine similarity [frames] of each frame to ``question``; ``chunks`` yields uint8
        [n, H, W, 3] arrays. Each chunk is embedded and let go before the next is read."""
        from PIL import Image

        text = self.embed_question(question)
        scores = []
        for chunk in chunks:
            for start in range(0, len(chunk), self.relevance.batch_frames):
                frames = chunk[start : start + self.relevance.batch_frames]
                pixels = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames])
                image = self.model.encode_image(pixels.to(self.device)).float()
                scores.append((torch.nn.functional.normalize(image, dim=-1) @ text).cpu())
        return torch.cat(scores) if scores else torch.empty(0)

    def score_video(self, video: Video, question: str) -> torch.Tensor:
        """`score_frames` over the sampled frames of ``video``, read lazily."""
        return self.score_frames(video.chunks(self.relevance.batch_frames), question)


def select_frames(
    scores: torch.Tensor, chunk_frames: int, retrieve: int, context_frames: int
) -> list[int]:
    """Frames to stream, in order: the ``retrieve`` chunks of ``chunk_frames`` frames whose best
    frame scores highest, and ``context_frames`` spread evenly over the other frames."""
    total = scores.numel()
    n_chunks = math.ceil(total / chunk_frames)
    padded = torch.full((n_chunks * chunk_frames,), -math.inf)
    padded[:total] = scores
    best = padded.view(n_chunks, chunk_frames).amax(dim=1)
    top = torch.topk(best, min(retrieve, n_chunks)).indices.tolist()
    chosen = {f for c in top for f in range(c * chunk_frames, min((c + 1) * chunk_frames, total))}
    rest = [f for f in range(total) if f not in chosen]
    if rest and context_frames:
        picks = np.linspace(0, len(rest) - 1, min(context_frames, len(rest)))
        chosen |= {rest[round(i)] for i in picks}
    return sorted(chosen)


def retrieved_video(video: Video, frames: list[int]) -> Video:
    """``video`` reading only its sampled frames at ``frames`` (indices into its samples)."""
    subset = copy.copy(video)
    subset.indices = [video.indices[f] for f in frames]
    return subset


def normalized(scores: torch.Tensor) -> torch.Tensor:
    """Min-max over the frames: the most relevant frame 1, the least 0 (all 0 when flat)."""
    span = scores.max() - scores.min() if scores.numel() else 0
    return (scores - scores.min()) / span if span > 0 else torch.zeros_like(scores)


def frame_marks(
    relevance: torch.Tensor, tokens: int, first_frame: int, frames: int, steps: int
) -> torch.Tensor:
    """Relevance [tokens] of a chunk's video entries: frames [first_frame, + frames) of the
    per-frame ``relevance``, laid out in ``steps`` equal temporal steps; a token gets the best
    relevance of its step's frames (a step of a temporal-patch encoder mixes its frames)."""
    best = torch.zeros(max(tokens, 0))
    for s in range(steps if tokens > 0 and frames > 0 else 0):
        first = first_frame + s * frames // steps
        last = max(first_frame + (s + 1) * frames // steps, first + 1)
        held = relevance[first:last]
        if held.numel():
            best[s * tokens // steps : (s + 1) * tokens // steps] = held.max()
    return best


def marking(
    cache: RetentionCache, relevance: torch.Tensor
) -> Callable[[int, int, int, int, int], None]:
    """An ``on_chunk`` for `stream_video` that marks each chunk's positions on ``cache`` with
    the per-frame ``relevance`` (in [0, 1]), for a `RelevancePrior` to read."""

    def on_chunk(start: int, tokens: int, first_frame: int, frames: int, steps: int) -> None:
        cache.mark_relevance(start, frame_marks(relevance, tokens, first_frame, frames, steps))

    return on_chunk


class RelevancePrior(RetentionPolicy):
    """Any policy, with ``weight`` times the question's relevance added to video entries.

    Scores are calibrated as the module doc says. The relevance of each video entry is read
    from the cache it lies in (`RetentionCache.mark_relevance`, set as each chunk of the video
    goes in: `marking`), so the policy holds nothing of a video and a snapshot of the cache
    carries its marks. With ``weight=0`` the policy's scores pass through untouched.
    """

    def __init__(self, base: RetentionPolicy, weight: float):
        self.base = base
        self.weight = float(weight)
        # Everything the engine reads of a policy is the base policy's, except the scale.
        self.name = base.name
        self.window = base.window
        self.accumulates = base.accumulates
        self.evicts = base.evicts
        self.uses_vision_saliency = base.uses_vision_saliency
        self.comparable = base.comparable or self.weight > 0

    def __repr__(self) -> str:
        return f"RelevancePrior({self.base!r}, weight={self.weight})"

    @property
    def preferred_allocation(self) -> str:
        # Read through: bound gates may name their own allocation.
        return self.base.preferred_allocation

    def bind(self, model) -> None:
        self.base.bind(model)

    def init_state(self, layer: int, hidden: torch.Tensor | None, keys: torch.Tensor):
        return self.base.init_state(layer, hidden, keys)

    def observe(self, layer: int, head: int, probs: torch.Tensor, state: torch.Tensor) -> None:
        self.base.observe(layer, head, probs, state)

    def score(self, view: LayerView) -> list[torch.Tensor]:
        return self.score_layers([view])[0]

    def score_layers(self, views: list[LayerView]) -> list[list[torch.Tensor]]:
        scores = self.base.score_layers(views)
        if self.weight == 0:
            return scores
        if not self.base.comparable:
            # Heads rank on their own scales: compete on ranks, as the engine ranks them.
            scores = [[_quantile(s.float()) for s in layer] for layer in scores]
        flat = torch.cat([s.float() for layer in scores for s in layer], dim=1)
        quantile = _quantile(flat)
        # Every layer of one ranking reads the same sequence's marks: a trailing 0 is what
        # positions never marked (text, or beyond the video) read.
        marks = views[0].relevance if views[0].relevance is not None else torch.zeros(0)
        table = torch.cat([marks, torch.zeros(1)]).to(flat.device)
        out, at = [], 0
        for layer, view in zip(scores, views, strict=True):
            row = []
            for s, positions, modality in zip(layer, view.positions, view.modality, strict=True):
                n = s.shape[1]
                lift = _relevance(table, positions, modality)
                row.append(quantile[:, at : at + n] + self.weight * lift)
                at += n
            out.append(row)
        return out


def _relevance(table: torch.Tensor, positions: torch.Tensor, modality: torch.Tensor):
    """Relevance [b, L] of entries at ``positions``: their frame's for video, else 0; ``table``
    holds each position's mark and a trailing 0."""
    index = torch.where((positions >= 0) & (positions < table.numel() - 1), positions.long(), -1)
    return torch.where(modality == int(Modality.VIDEO), table[index], 0.0)


def _quantile(flat: torch.Tensor) -> torch.Tensor:
    """Each score's share of its row's entries that score strictly lower, in [0, 1): equal
    scores get equal values, and the order is kept."""
    ordered = torch.sort(flat, dim=1).values
    below = torch.searchsorted(ordered, flat.contiguous(), right=False)
    return below.float() / flat.shape[1]
