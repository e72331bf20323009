"""Gates trained by the TRIM-KV authors' code, turned into mmretain's format.

A TRIM-KV checkpoint directory holds ``config.json`` (the gate type ``retention_gate``, its
``retention_gate_intermediate_size`` and the ``memory_size`` it was trained for) and
``trimkv_weights.pth``: a ``torch.save`` of the model's state dict filtered to the gates, keys
``...layers.{l}.self_attn.retention_gate.{linear1,linear2,linear3,bias}...``. Two gate types:

- ``rg`` (TRIM-KV, https://arxiv.org/abs/2512.03324): ``linear1`` → the base model's activation
  → ``linear2`` (no bias), plus ``bias``; one set per layer: untied gates for ``trimkv``.
- ``rg10`` (DBTrimKV, https://arxiv.org/abs/2605.09649): ``linear1`` → act → ``linear2`` → act
  → ``linear3`` (no bias), plus ``bias``. With its layers tied, ``linear3`` and ``bias`` are the
  same tensors in every layer (the file still lists them per layer): tied gates for ``global``.

Both are mmretain gates with one or two hidden layers of the model's activation, the readout's
bias being TRIM-KV's ``bias``. TRIM-KV scores an entry at ``seen + 1`` (one step past the next
query), so imported gates record ``distance_offset=1`` and keep what its code keeps.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import GatesMismatchError, GatesNotFoundError
from .retention_gates import GatesConfig, RetentionGates

CONFIG = "config.json"
WEIGHTS = "trimkv_weights.pth"
# Gate type -> (hidden layers, parameter names per layer in the file).
GATE_TYPES: dict[str, tuple[int, tuple[str, ...]]] = {
    "rg": (1, ("linear1.weight", "linear1.bias", "linear2.weight", "bias")),
    "rg10": (
        2,
        (
            "linear1.weight",
            "linear1.bias",
            "linear2.weight",
            "linear2.bias",
            "linear3.weight",
            "bias",
        ),
    ),
}
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.retention_gate\.(.+)$")


def import_trimkv(checkpoint: str | Path, model_config: Any) -> RetentionGates:
    """The gates of the TRIM-KV checkpoint directory ``checkpoint`` for the base model whose
    transformers config is ``model_config``; raises `GatesMismatchError` naming what does not
    fit, `GatesNotFoundError` when a file is missing."""
    checkpoint = Path(checkpoint)
    record = _read_config(checkpoint)
    gate_type = record.get("retention_gate")
    if gate_type not in GATE_TYPES:
        raise GatesMismatchError(
            f"{checkpoint / CONFIG} names retention_gate={gate_type!r}; mmretain imports "
            f"{', '.join(GATE_TYPES)}"
        )
    per_layer = _per_layer(_read_weights(checkpoint), checkpoint)
    text = model_config.get_text_config()
    hidden_layers, names = GATE_TYPES[gate_type]
    layers = text.num_hidden_layers
    if sorted(per_layer) != list(range(layers)) or any(
        set(params) != set(names) for params in per_layer.values()
    ):
        found = sorted(per_layer)
        raise GatesMismatchError(
            f"{checkpoint / WEIGHTS} holds gates for layers {_span(found)} with parameters "
            f"{sorted(per_layer[found[0]]) if found else []}; the base model has {layers} layers "
            f"and {gate_type} gates have {list(names)}: import the checkpoint trained for this "
            "model"
        )
    readout = names[-2]
    # Tied when every layer's readout and bias are one tensor, as DBTrimKV trains them.
    tied = gate_type == "rg10" and all(
        torch.equal(per_layer[layer][name], per_layer[0][name])
        for layer in range(layers)
        for name in (readout, "bias")
    )
    config = replace(
        GatesConfig.for_model(
            model_config, tied=tied, width=per_layer[0]["linear1.weight"].shape[0]
        ),
        budget=record.get("memory_size"),
        allocation=None if tied else "uniform",
        hidden_layers=hidden_layers,
        activation=text.hidden_act,
        distance_offset=1,
    )
    gates = RetentionGates(config)
    state = {}
    for layer, params in per_layer.items():
        for i, linear in enumerate(names[: 2 * hidden_layers : 2]):
            state[f"trunks.{layer}.{2 * i}.weight"] = params[linear]
            state[f"trunks.{layer}.{2 * i}.bias"] = params[linear.replace("weight", "bias")]
        if not tied or layer == 0:
            slot = 0 if tied else layer
            state[f"readouts.{slot}.weight"] = params[readout]
            state[f"readouts.{slot}.bias"] = params["bias"]
    expected = {name: tuple(t.shape) for name, t in gates.state_dict().items()}
    for name, tensor in state.items():
        if tuple(tensor.shape) != expected[name]:
            layer = name.split(".")[1]
            raise GatesMismatchError(
                f"{checkpoint / WEIGHTS}: a layer-{layer} gate tensor is {tuple(tensor.shape)}, "
                f"but the base model ({config.describe()}) needs {expected[name]}; import the "
                "checkpoint trained for this model"
            )
    gates.load_state_dict({name: t.float() for name, t in state.items()})
    return gates


def _read_config(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / CONFIG
    if not path.is_file():
        raise GatesNotFoundError(
            f"no TRIM-KV checkpoint at {checkpoint}: {CONFIG} is missing (a checkpoint directory "
            f"holds {CONFIG} and {WEIGHTS})"
        )
    try:
        record = json.loads(path.read_text())
    except ValueError as error:
        raise GatesMismatchError(f"{path} is not JSON: {error}") from None
    if not isinstance(record, dict):
        raise GatesMismatchError(f"{path} is not a JSON object")
    return record


def _read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The file's state dict; anything but a plain dict of tensors is refused, and with
    ``weights_only`` no object in the file is built, so nothing in it runs."""
    path = checkpoint / WEIGHTS
    if not path.is_file():
        raise GatesNotFoundError(f"no {WEIGHTS} in {checkpoint}: the gates' weights are missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GatesMismatchError(
            f"{path} is not a plain state dict of tensors and was not loaded ({reason}); save "
            "the gates with torch.save(state_dict)"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise GatesMismatchError(
            f"{path} holds a {type(state).__name__}, not a plain dict of tensors; save the gates "
            "with torch.save(state_dict)"
        )
    return state


def _per_layer(state: dict[str, torch.Tensor], checkpoint: Path) -> dict[int, dict[str, Any]]:
    """The gate tensors by layer and parameter name, whatever prefix the model's keys have."""
    per_layer: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _KEY.search(key)
        if match is None:
            raise GatesMismatchError(
                f"{checkpoint / WEIGHTS} holds {key!r}, which is not a retention-gate tensor "
                "(…layers.N.self_attn.retention_gate.…); save only the gates' parameters"
            )
        per_layer.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    return per_layer


def _span(layers: list[int]) -> str:
    return f"{layers[0]}-{layers[-1]}" if layers else "none"
