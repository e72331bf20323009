"""A word-level tokenizer over the test-bed's vocabulary, and its chat template."""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .draw import COLOURS, SHAPES
from .suites import dialogue, image_needle, video_needle

PAD, UNK = "<|endoftext|>", "<unk>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
SPECIAL_TOKENS = (PAD, UNK, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

# Words of the fixed phrases the suites speak, beyond their prompts and answers.
PHRASE_WORDS = "system user assistant ok remember : the is . ? what colour top bottom"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% if not loop.last %} {% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def vocabulary() -> list[str]:
    """Special tokens first, then every word any suite can say, sorted."""
    prompts = [
        *image_needle.PROMPTS.values(),
        *video_needle.PROMPTS.values(),
        *dialogue.PROMPTS.values(),
    ]
    words = set(" ".join([PHRASE_WORDS, *prompts]).split())
    words |= {*COLOURS, *SHAPES, *dialogue.NOUNS}
    words = {w for w in words if "{" not in w}  # drop template fields such as {noun}
    return [*SPECIAL_TOKENS, *sorted(words)]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer: lower-cased, split on spaces and punctuation."""
    vocab = {token: i for i, token in enumerate(vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=IM_END,
        extra_special_tokens={"image_token": IMAGE_PAD, "video_token": VIDEO_PAD},
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
    )
