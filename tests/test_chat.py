"""Image chat: the cache carries across turns and matches the unmodified model."""

from __future__ import annotations

import io
import sys
import warnings

import pytest
import torch
from PIL import Image

from mmretain import cli
from mmretain.api import load
from mmretain.errors import ConversationRestartWarning


def vanilla_reply(vlm, messages, max_new_tokens):
    """Reference: the stock model's greedy reply to the whole conversation, from scratch."""
    text = vlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = [
        Image.open(c["image"]).convert("RGB")
        for m in messages
        for c in m["content"]
        if c["type"] == "image"
    ]
    inputs = vlm.processor(text=[text], images=images, return_tensors="pt")
    with torch.inference_mode():
        out = vlm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_two_turns_match_vanilla_and_encode_the_image_once(checkpoint, image_file):
    vlm = load(checkpoint, policy="snapkv", budget=10_000)
    encoded = []
    hook = vlm.model.model.visual.register_forward_hook(lambda *a: encoded.append(1))
    image = {"type": "image", "image": str(image_file)}
    turn1 = [{"role": "user", "content": [image, {"type": "text", "text": "what shape is it ?"}]}]
    first = vlm.chat(turn1, max_new_tokens=4)
    turn2 = [
        *turn1,
        {"role": "assistant", "content": [{"type": "text", "text": first.text}]},
        {"role": "user", "content": [{"type": "text", "text": "what colour is it ?"}]},
    ]
    second = vlm.chat(turn2, max_new_tokens=4)
    hook.remove()
    assert encoded == [1]  # turn 2 reused the cached image entries
    assert second.stats.tokens_seen > first.stats.tokens_seen
    assert second.stats.seen_by_modality["image"] == 16
    assert first.tokens == vanilla_reply(vlm, turn1, 4)
    assert second.tokens == vanilla_reply(vlm, turn2, 4)


def test_three_turns_with_the_models_own_replies_carry_the_cache_over(checkpoint, image_file):
    """Random weights reply with any token, special ones included, so a reply passed back as
    text need not tokenize as it was generated: the cache still carries over, every turn."""
    vlm = load(checkpoint, policy="snapkv", budget=0.5)
    encoded = []
    hook = vlm.model.model.visual.register_forward_hook(lambda *a: encoded.append(1))
    image = {"type": "image", "image": str(image_file)}
    conversation = [
        {"role": "user", "content": [image, {"type": "text", "text": "what shape is it ?"}]}
    ]
    sessions, seen = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConversationRestartWarning)
        for question in ("what colour is it ?", "where is it ?", None):
            answer = vlm.chat(conversation, max_new_tokens=6)
            sessions.append(vlm._chat)
            seen.append(answer.stats.tokens_seen)
            assert answer.stats.restarts == 0
            if question:
                conversation += [
                    {"role": "assistant", "content": [{"type": "text", "text": answer.text}]},
                    {"role": "user", "content": [{"type": "text", "text": question}]},
                ]
    hook.remove()
    assert encoded == [1]
    assert sessions[0] is sessions[1] is sessions[2]
    assert seen[0] < seen[1] < seen[2]
    assert answer.stats.evictions > 0


@pytest.mark.parametrize(
    "options", [{"num_beams": 3}, {"do_sample": True, "num_return_sequences": 2}]
)
def test_beam_search_is_refused_with_the_fix(checkpoint, options):
    from transformers import GenerationConfig

    from mmretain.errors import ConfigError

    vlm = load(checkpoint, policy="snapkv", budget=0.5)
    asked = [{"role": "user", "content": [{"type": "text", "text": "what shape is it ?"}]}]
    with pytest.raises(ConfigError, match="one reply per call"):
        vlm.chat(asked, generation_config=GenerationConfig(max_new_tokens=2, **options))


def test_a_changed_earlier_turn_restarts_with_a_warning_and_counts(checkpoint):
    vlm = load(checkpoint, policy="snapkv", budget=0.5)
    first = [{"role": "user", "content": [{"type": "text", "text": "what shape is it ?"}]}]
    reply = vlm.chat(first, max_new_tokens=2)
    edited = [
        {"role": "user", "content": [{"type": "text", "text": "what colour is it ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": reply.text}]},
        {"role": "user", "content": [{"type": "text", "text": "where is it ?"}]},
    ]
    with pytest.warns(ConversationRestartWarning, match="prefilled again whole"):
        again = vlm.chat(edited, max_new_tokens=2)
    assert again.stats.restarts == 1
    vlm.reset()
    assert vlm.chat(first, max_new_tokens=2).stats.restarts == 0


def test_cli_chat_reads_turns_from_stdin(checkpoint, image_file, monkeypatch, capsys):
    monkeypatch.setattr(
        sys, "stdin", io.StringIO("what shape is it ?\nwhat colour is it ?\n/quit\n")
    )
    code = cli.main(
        [
            "chat",
            "--image",
            str(image_file),
            "--model",
            str(checkpoint),
            "--budget",
            "0.5",
            "--max-new-tokens",
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert len(captured.out.strip().splitlines()) == 2  # one reply per turn
    assert captured.err.count("[kept") == 2


@pytest.mark.parametrize("content", [b"not an image at all", None])
def test_cli_chat_bad_image_exits_2(checkpoint, tmp_path, capsys, content):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    code = cli.main(["chat", "--image", str(path), "--model", str(checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mmretain: error:") and err.count("\n") == 1


def test_cli_chat_ctrl_c_is_one_line(checkpoint, image_file, monkeypatch, capsys):
    class Interrupted(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", Interrupted())
    code = cli.main(["chat", "--image", str(image_file), "--model", str(checkpoint)])
    err = capsys.readouterr().err
    assert code == 130
    assert err.splitlines()[-1] == "mmretain: interrupted" and "Traceback" not in err


def test_cli_chat_reset_says_so(checkpoint, image_file, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("what shape is it ?\n/reset\n/quit\n"))
    assert cli.main(["chat", "--image", str(image_file), "--model", str(checkpoint)]) == 0
    assert "(conversation reset" in capsys.readouterr().err


def test_cli_chat_prompts_at_a_terminal(checkpoint, image_file, monkeypatch, capsys):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("/quit\n"))
    assert cli.main(["chat", "--image", str(image_file), "--model", str(checkpoint)]) == 0
    assert capsys.readouterr().err.endswith("> ")


def test_cli_chat_non_utf8_input_is_one_line(checkpoint, image_file, monkeypatch, capsys):
    # Bytes that are not UTF-8 reach Python as lone surrogates.
    monkeypatch.setattr(sys, "stdin", io.StringIO("what \udcff ?\n"))
    assert cli.main(["chat", "--image", str(image_file), "--model", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "mmretain: error: the message holds bytes that are not UTF-8 text; give it as UTF-8"
    )


def test_cli_chat_on_the_testbed_model_stops_at_its_one_word_answer(
    image_file, monkeypatch, capsys
):
    """The test-bed model ends its turn after one word on the questions it was trained on, and
    the chat names them; on others a tiny model may run on to --max-new-tokens."""
    from mmretain.testbed.suites import make_sample

    sample = make_sample("image-needle", 0, split="eval", question="colour")
    sample.images[0].save(image_file)
    question = sample.question
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{question}\n/quit\n"))
    assert cli.main(["chat", "--image", str(image_file)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{sample.answer}\n"
    assert f"The test-bed model answers, in one word: '{question}';" in err
