"""Tiny random-weight models of the real transformers classes, built in code (no download)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

# The models here are tiny: thread fan-out costs more than it buys, and the machine is shared.
torch.set_num_threads(1)

# Nothing reaches the network in tests: a look-up or a connection to any host but this one is
# refused, and recorded, so that a library that swallows the error still fails the test.
_LOCAL_HOSTS = {None, "localhost", "127.0.0.1", "::1", "0.0.0.0", ""}
_network_attempts: list[str] = []
_real_getaddrinfo, _real_connect = socket.getaddrinfo, socket.socket.connect


def _getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in _LOCAL_HOSTS:
        _network_attempts.append(f"look-up of {name}")
        raise OSError(f"network disabled in tests: look-up of {name}")
    return _real_getaddrinfo(host, *args, **kwargs)


def _connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL_HOSTS:
        _network_attempts.append(f"connection to {address}")
        raise OSError(f"network disabled in tests: connection to {address}")
    return _real_connect(self, address)


socket.getaddrinfo = _getaddrinfo
socket.socket.connect = _connect


@pytest.fixture(autouse=True)
def no_network_attempt():
    """Fails the test that tried to reach another host, even if the error was swallowed."""
    _network_attempts.clear()
    yield
    assert not _network_attempts, f"a test reached for the network: {_network_attempts}"


VOCAB = 128
TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
IMAGE_TOKEN = 120
VIDEO_TOKEN = 121
VISION_START = 122


@dataclass
class TinyVLM:
    """A tiny model plus a way to build prompts for it, as a processor would."""

    model: torch.nn.Module
    family: str
    image_tokens: int  # tokens per image
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    def text(self, n: int) -> torch.Tensor:
        return torch.randint(3, 100, (n,), generator=self.generator)

    def prompt(self, segments: list[int | str]) -> dict:
        """Inputs for a prompt of text runs (ints: that many random tokens) and "image"/"video"."""
        ids, images, videos = [], [], []
        for segment in segments:
            if isinstance(segment, int):
                ids.append(self.text(segment))
            elif segment == "image":
                ids.append(torch.full((self.image_tokens,), IMAGE_TOKEN))
                images.append(segment)
            elif segment == "video":
                ids.append(torch.full((2 * self.image_tokens,), VIDEO_TOKEN))
                videos.append(segment)
        input_ids = torch.cat(ids)[None]
        inputs = {"input_ids": input_ids}
        g = self.generator
        if self.family == "llava" and images:
            inputs["pixel_values"] = torch.randn(len(images), 3, 28, 28, generator=g)
        if self.family == "qwen2_vl":
            if images:
                inputs["pixel_values"] = torch.randn(16 * len(images), 1176, generator=g)
                inputs["image_grid_thw"] = torch.tensor([[1, 4, 4]] * len(images))
            if videos:
                inputs["pixel_values_videos"] = torch.randn(32 * len(videos), 1176, generator=g)
                inputs["video_grid_thw"] = torch.tensor([[2, 4, 4]] * len(videos))
            types = torch.zeros_like(input_ids)
            types[input_ids == IMAGE_TOKEN] = 1
            types[input_ids == VIDEO_TOKEN] = 2
            inputs["mm_token_type_ids"] = types
        return inputs


def make_llama() -> TinyVLM:
    torch.manual_seed(0)
    return TinyVLM(LlamaForCausalLM(LlamaConfig(**TEXT)).eval(), "llama", 0)


def make_qwen2() -> TinyVLM:
    torch.manual_seed(0)
    return TinyVLM(Qwen2ForCausalLM(Qwen2Config(**TEXT)).eval(), "qwen2", 0)


def make_llava() -> TinyVLM:
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=7,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=LlamaConfig(**TEXT), image_token_id=IMAGE_TOKEN
    )
    return TinyVLM(LlavaForConditionalGeneration(config).eval(), "llava", 16)


def make_qwen2_vl() -> TinyVLM:
    torch.manual_seed(0)
    text = dict(
        TEXT,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=64,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START,
    )
    return TinyVLM(Qwen2VLForConditionalGeneration(config).eval(), "qwen2_vl", 4)


FACTORIES = {
    "llama": make_llama,
    "qwen2": make_qwen2,
    "llava": make_llava,
    "qwen2_vl": make_qwen2_vl,
}


def kept_positions(cache) -> dict[tuple[int, int], set[int]]:
    """The positions each (layer, KV head) of a `RetentionCache` holds."""
    return {
        (layer_idx, h): set(p[0][p[0] >= 0].tolist())
        for layer_idx, layer in enumerate(cache.layers)
        for h, p in enumerate(layer.positions)
    }


def top_entries(scores: torch.Tensor, budget: int, allocation: str) -> dict[tuple[int, int], set]:
    """What a top-k keeps of ``scores`` [layers, heads, T]: ``budget`` per head (uniform), or
    ``budget`` × layers × heads over all of them (global)."""
    if allocation == "global":
        flat = scores.flatten()
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(budget * scores.shape[0] * scores.shape[1]).indices] = True
        keep = keep.view_as(scores)
    else:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep.scatter_(-1, scores.topk(budget, dim=-1).indices, True)
    return {
        (layer, h): set(keep[layer, h].nonzero().flatten().tolist())
        for layer in range(scores.shape[0])
        for h in range(scores.shape[1])
    }


@pytest.fixture(scope="session", params=sorted(FACTORIES))
def any_model(request) -> TinyVLM:
    return FACTORIES[request.param]()


@pytest.fixture(scope="session", params=["llava", "qwen2_vl"])
def vlm(request) -> TinyVLM:
    return FACTORIES[request.param]()


@pytest.fixture(scope="session")
def llama() -> TinyVLM:
    return make_llama()


# -- families driven by their real processors ----------------------------------------------------
# Each factory builds a tiny random-weight model of the real class and the family's real
# processor over a word-level tokenizer, so tests see exactly the placeholders a processor emits.

LLAVA_SPECIAL = ["<pad>", "<unk>", "</s>", "<image>", "<video>"]
QWEN_SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
FAMILY_SPECIAL = LLAVA_SPECIAL + QWEN_SPECIAL
FAMILY_WORDS = ["what", "is", "the", "colour", "of", "a", "red", "green", "blue", "shape", "?"]


def family_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(FAMILY_SPECIAL + FAMILY_WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="</s>",
        additional_special_tokens=FAMILY_SPECIAL[3:],
    )


def family_text(tokenizer) -> dict:
    """Config fields every tiny decoder shares, with token ids from ``tokenizer``."""
    ids = tokenizer.convert_tokens_to_ids
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=ids("<pad>"),
        bos_token_id=None,
        eos_token_id=ids("</s>"),
    )


@dataclass
class TinyFamily:
    """A tiny model with its real processor; ``prompt`` goes through that processor."""

    model: torch.nn.Module
    processor: object
    family: str
    image_placeholder: str
    video_placeholder: str
    image_shapes: tuple[tuple[int, int], ...]  # (height, width) of the i-th image of a prompt
    video_shape: tuple[int, int, int]  # (frames, height, width)
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    def image(self, index: int) -> torch.Tensor:
        h, w = self.image_shapes[index % len(self.image_shapes)]
        return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=self.generator)

    def video(self) -> torch.Tensor:
        """Frames [n, H, W, 3], as a video reader returns them."""
        n, h, w = self.video_shape
        return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=self.generator)

    def prompt(self, segments: list[int | str], fps: float | None = None) -> dict:
        """Processor output for text runs (ints: that many words) and "image"/"video"."""
        words, images, videos = [], [], []
        for segment in segments:
            if isinstance(segment, int):
                picks = torch.randint(len(FAMILY_WORDS), (segment,), generator=self.generator)
                words.extend(FAMILY_WORDS[i] for i in picks.tolist())
            elif segment == "image":
                words.append(self.image_placeholder)
                images.append(self.image(len(images)))
            else:
                words.append(self.video_placeholder)
                videos.append(self.video())
        return self.process(words, images, videos, fps)

    def process(
        self,
        words: list[str],
        images: list[torch.Tensor] | None = None,
        videos: list[torch.Tensor] | None = None,
        fps: float | None = None,
    ) -> dict:
        """The processor's output for one prompt. Videos come as frames already sampled at
        ``fps``; without it, the processor's default for frames without metadata applies."""
        extra = {}
        if videos and fps is not None:
            extra["video_metadata"] = [
                {"total_num_frames": len(v), "fps": fps, "frames_indices": list(range(len(v)))}
                for v in videos
            ]
        out = self.processor(
            text=[" ".join(words)],
            images=[images] if images else None,
            videos=videos or None,
            return_tensors="pt",
            **extra,
        )
        return dict(out)


def make_llava_next() -> TinyFamily:
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    torch.manual_seed(0)
    tokenizer = family_tokenizer()
    pinpoints = [[28, 56], [56, 28], [56, 56]]
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=7,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=LlamaConfig(**family_text(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": 28},
            crop_size={"height": 28, "width": 28},
            image_grid_pinpoints=pinpoints,
        ),
        tokenizer=tokenizer,
        patch_size=7,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return TinyFamily(
        LlavaNextForConditionalGeneration(config).eval(),
        processor,
        "llava_next",
        "<image>",
        "",
        ((40, 70), (50, 45)),
        (0, 0, 0),
    )


def make_llava_onevision() -> TinyFamily:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        SiglipVisionConfig,
    )

    torch.manual_seed(0)
    tokenizer = family_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56], [56, 84]]
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=7,
    )
    # anyres_max_4: a canvas of more than ~4 crops is shrunk, so both packing paths run.
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=Qwen2Config(**family_text(tokenizer)),
        image_token_id=ids("<image>"),
        video_token_id=ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_4",
    )
    size = {"height": 28, "width": 28}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_4",
    )
    return TinyFamily(
        LlavaOnevisionForConditionalGeneration(config).eval(),
        processor,
        "llava_onevision",
        "<image>",
        "<video>",
        ((40, 70), (56, 60)),
        (5, 28, 28),
    )


def qwen_processor(processor_cls, video_processor, tokenizer, patch: int):
    from transformers import Qwen2VLImageProcessor

    side = 2 * patch  # one merged token
    image_processor = Qwen2VLImageProcessor(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=(2 * side) ** 2,
        max_pixels=(4 * side) ** 2,
    )
    return processor_cls(
        image_processor=image_processor, video_processor=video_processor, tokenizer=tokenizer
    )


def make_qwen2_5_vl() -> TinyFamily:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLVideoProcessor,
    )

    torch.manual_seed(0)
    tokenizer = family_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        family_text(tokenizer),
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
    )
    # window_size 56 = 2 x 2 merged tokens per window: a 4 x 4 token image has four windows.
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
        tokens_per_second=2,
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    videos = Qwen2VLVideoProcessor(
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=56 * 56,
        max_pixels=56 * 112,
        cap_pixels_per_frame=False,
    )
    processor = qwen_processor(Qwen2_5_VLProcessor, videos, tokenizer, 14)
    return TinyFamily(
        Qwen2_5_VLForConditionalGeneration(config).eval(),
        processor,
        "qwen2_5_vl",
        "<|vision_start|><|image_pad|><|vision_end|>",
        "<|vision_start|><|video_pad|><|vision_end|>",
        ((112, 112), (60, 110)),
        (6, 56, 112),
    )


def make_qwen3_vl() -> TinyFamily:
    from transformers import (
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    torch.manual_seed(0)
    tokenizer = family_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        family_text(tokenizer),
        head_dim=16,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1e4,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        },
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0, 1],
    )
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    videos = Qwen3VLVideoProcessor(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        do_sample_frames=False,
        size={"shortest_edge": 64 * 64, "longest_edge": 6 * 64 * 128},
        cap_pixels_per_frame=False,
    )
    processor = qwen_processor(Qwen3VLProcessor, videos, tokenizer, 16)
    return TinyFamily(
        Qwen3VLForConditionalGeneration(config).eval(),
        processor,
        "qwen3_vl",
        "<|vision_start|><|image_pad|><|vision_end|>",
        "<|vision_start|><|video_pad|><|vision_end|>",
        ((128, 128), (70, 120)),
        (6, 64, 128),
    )


FAMILY_FACTORIES = {
    "llava_next": make_llava_next,
    "llava_onevision": make_llava_onevision,
    "qwen2_5_vl": make_qwen2_5_vl,
    "qwen3_vl": make_qwen3_vl,
}


_FAMILIES: dict[str, TinyFamily] = {}


def tiny_family(name: str) -> TinyFamily:
    """One shared instance per family: tests never train them, and building costs time."""
    if name not in _FAMILIES:
        _FAMILIES[name] = FAMILY_FACTORIES[name]()
    return _FAMILIES[name]


# -- on disk: a tiny Qwen2-VL checkpoint and a short video, one of each per test module -------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random-weight Qwen2-VL written with save_pretrained, with its processor."""
    from checkpoints import write_qwen2_vl

    return write_qwen2_vl(tmp_path_factory.mktemp("qwen2_vl"))


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    """A 20-frame, 4 fps random-noise mp4."""
    import numpy as np

    from mmretain import media

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    media.write_video(
        path, (rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(20)), 4
    )
    return path


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A 112 x 112 random-noise PNG."""
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "shapes.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(path)
    return path
