"""The command line starts without the heavy libraries: help and argument errors are instant."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# (PyAV, at a fifth of a second, may load: `eval` lists its suites, whose samples read video.)
HEAVY = ("torch", "transformers", "accelerate", "datasets", "open_clip")
# Runs one command's --help in a fresh interpreter and prints the heavy modules it imported.
PROBE = """
import contextlib, io, json, sys
from mmretain.cli import main
with contextlib.redirect_stdout(io.StringIO()) as text:
    try:
        main(sys.argv[2:])
    except SystemExit:
        pass
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"heavy": heavy, "help": text.getvalue()}))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["video-qa", "--help"],
        ["chat", "--help"],
        ["eval", "--help"],
        ["testbed", "--help"],
        ["train-gates", "--help"],
    ],
)
def test_help_imports_no_heavy_library(argv):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY), *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(done.stdout)
    assert found["help"].startswith("usage: mmretain")
    assert found["heavy"] == [], f"`mmretain {' '.join(argv)}` imported {found['heavy']}"


def test_import_mmretain_is_lazy_and_complete():
    probe = (
        "import sys, mmretain; before = 'torch' in sys.modules; "
        "names = [getattr(mmretain, n) for n in mmretain.__all__]; "
        "print(before, 'torch' in sys.modules, len(names))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    import mmretain

    assert done.stdout.split() == ["False", "True", str(len(mmretain.__all__))]


def test_help_lists_every_registered_policy():
    from mmretain.defaults import POLICY_NAMES
    from mmretain.policies import POLICIES

    assert sorted(POLICY_NAMES) == sorted(POLICIES)
