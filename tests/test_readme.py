"""The README's Python blocks run as pasted, in order, on the embedded test-bed model."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_python_blocks_run_as_pasted_without_a_warning(tmp_path, monkeypatch, capsys):
    blocks = readme_blocks()
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)  # the blocks write their stand-in media files here
    namespace: dict = {}
    with warnings.catch_warnings():
        # A warning the reader did not cause (a budget too small for the example, a restart)
        # is a defect of the example.
        warnings.simplefilter("error", UserWarning)
        for number, block in enumerate(blocks, start=1):
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    printed = capsys.readouterr().out
    # The `retain()` block ends on its stats, the chat carried its cache over, the video was
    # answered twice and the relevance block streamed the whole needle video.
    assert "RetentionStats(" in printed
    assert namespace["reply"].stats.restarts == 0
    assert len(namespace["answers"]) == 2
    # A snapshot of the compressed video answers as the session itself did.
    again = namespace["again"]
    assert again.tokens == namespace["out"][0, -len(again.tokens) :].tolist()
    processor = namespace["processor"]
    assert again.text == processor.decode(again.tokens, skip_special_tokens=True).strip()
    assert again.text in printed
    assert namespace["answer"].frames == 1024
