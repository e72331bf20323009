"""`RetentionGates`: one small MLP per decoder layer that rates every new KV entry at creation.

A gate maps the layer's gate input (the hidden state after the pre-attention norm) to one log
retention log β ∈ (−∞, 0] per KV head. An entry created at position i is worth β_i^(t−i) at step
t, so it decays at its own rate (TRIM-KV: Bui et al., "Cache What Lasts: Token Retention for
Memory-Bounded KV Cache in LLMs", https://arxiv.org/abs/2512.03324).

With ``tied=True`` the final projection and its bias are one module shared by every layer, which
puts all layers' scores on one scale so that a single global ranking is meaningful (Bui et al.,
"Make Each Token Count: Towards Improving Long-Context Performance with KV Cache Eviction",
https://arxiv.org/abs/2605.09649).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.activations import ACT2FN

from ..budget import ALLOCATIONS
from ..errors import GatesMismatchError, GatesNotFoundError

CONFIG_FILE = "retention_gates.json"
WEIGHTS_FILE = "retention_gates.safetensors"
FORMAT = "mmretain-retention-gates"
# logsigmoid(5) ≈ −0.0067: every entry starts nearly never forgotten (β^100 ≈ 0.5), so training
# begins close to the unmodified model and the capacity loss pushes retention down. A larger
# bias (18 was tried) saturates the sigmoid: its gradient, about e^−bias, is too small for the
# gates to learn which tokens matter, and whole heads stay at β ≈ 1 whatever the token.
BIAS_INIT = 5.0


@dataclass(frozen=True)
class GatesConfig:
    """What a set of gates was built for; saved as JSON next to the weights.

    ``budget`` is the per-head capacity M the gates were trained for (None if untrained).
    ``allocation`` is the allocation the gates rank best with, when one was chosen for them on
    held-out samples (None: the policy's own); `RetentionConfig.allocation` overrides it.

    The layout: ``hidden_layers`` linear layers of ``width``, each followed by ``activation`` (a
    transformers activation name), then the readout. mmretain's own gates are two SiLU layers,
    the layout of TRIM-KV's ``rg10`` gates (DBTrimKV); its ``rg`` gates have one layer, both with
    the base model's activation. ``distance_offset`` is added to every entry's age when it is
    scored: 0 for gates trained here (the next query reads an entry at age t − i, as in training),
    1 for gates imported from TRIM-KV's code, which scores at ``seen + 1`` (see
    `mmretain.gates.trimkv_import`), so imported gates keep what that code keeps.
    """

    model_family: str
    hidden_size: int
    num_layers: int
    num_kv_heads: int
    tied: bool
    width: int = 512
    budget: int | None = None
    allocation: str | None = None
    hidden_layers: int = 2
    activation: str = "silu"
    distance_offset: int = 0

    @classmethod
    def for_model(cls, config, *, tied: bool, width: int = 512) -> GatesConfig:
        """Sizes read from a transformers config; multimodal configs give their text config."""
        text = config.get_text_config()
        return cls(
            model_family=config.model_type,
            hidden_size=text.hidden_size,
            num_layers=text.num_hidden_layers,
            num_kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
            tied=tied,
            width=width,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.hidden_size, self.num_layers, self.num_kv_heads)

    def describe(self) -> str:
        hidden, layers, heads = self.shape
        return f"{self.model_family} (hidden {hidden}, {layers} layers, {heads} KV heads)"


class RetentionGates(nn.Module):
    """Per-layer gates: d → width (SiLU) → width (SiLU) → one logit per KV head → logsigmoid
    (the layout `GatesConfig` describes).

    ``gates(layer, hidden)`` takes the layer's gate input [b, q, d] and returns log β
    [b, kv_heads, q]. Untied (TRIM-KV) gates have one readout per layer; tied ("global") gates
    share a single readout across layers.
    """

    def __init__(self, config: GatesConfig):
        super().__init__()
        self.config = config
        if config.hidden_layers < 1 or config.activation not in ACT2FN:
            raise GatesMismatchError(
                f"gates need at least one hidden layer and a transformers activation, got "
                f"hidden_layers={config.hidden_layers}, activation={config.activation!r}"
            )
        widths = [config.hidden_size] + [config.width] * config.hidden_layers
        self.trunks = nn.ModuleList(
            nn.Sequential(
                *(
                    module
                    for inputs, outputs in itertools.pairwise(widths)
                    for module in (nn.Linear(inputs, outputs), ACT2FN[config.activation])
                )
            )
            for _ in range(config.num_layers)
        )
        self.readouts = nn.ModuleList(
            nn.Linear(config.width, config.num_kv_heads)
            for _ in range(1 if config.tied else config.num_layers)
        )
        for readout in self.readouts:
            nn.init.constant_(readout.bias, BIAS_INIT)

    @classmethod
    def for_model(cls, model: nn.Module, *, tied: bool, width: int = 512) -> RetentionGates:
        """Freshly initialised gates sized for ``model`` (a transformers model)."""
        return cls(GatesConfig.for_model(model.config, tied=tied, width=width))

    def readout(self, layer: int) -> nn.Linear:
        return self.readouts[0 if self.config.tied else layer]

    def forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.readout(layer)(self.trunks[layer](hidden))  # [b, q, kv_heads]
        return F.logsigmoid(logits).transpose(1, 2)

    def log_retention(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """log β [b, kv_heads, q] in float32 on ``hidden``'s device, whatever the model's dtype
        and device (layers of a model split over devices each send their hidden states here)."""
        weight = self.readouts[0].weight
        log_beta = self(layer, hidden.to(device=weight.device, dtype=weight.dtype))
        return log_beta.to(device=hidden.device, dtype=torch.float32)

    def check_fits(self, model: nn.Module, source: str = "these retention gates") -> None:
        """Raise `GatesMismatchError` naming both shapes when ``model`` is not what they fit."""
        wanted = GatesConfig.for_model(model.config, tied=self.config.tied)
        if wanted.shape != self.config.shape:
            raise GatesMismatchError(
                f"{source} were built for {self.config.describe()}, but the model is "
                f"{wanted.describe()}; train gates for this model with `mmretain train-gates`"
            )

    # -- save / load -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``retention_gates.safetensors`` and ``retention_gates.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.state_dict().items()}
        save_file(tensors, directory / WEIGHTS_FILE)
        record = {"format": FORMAT, **asdict(self.config)}
        (directory / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, model: nn.Module | None = None
    ) -> RetentionGates:
        """Gates saved by `save_pretrained`; with ``model``, checked to fit it first."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise GatesNotFoundError(
                f"no retention gates in {directory} (expected {CONFIG_FILE} and {WEIGHTS_FILE}); "
                "create them with `mmretain train-gates --model M --out DIR`"
            )
        record = json.loads(config_path.read_text())
        if record.pop("format", None) != FORMAT:
            raise GatesMismatchError(f"{config_path} does not describe mmretain retention gates")
        config = GatesConfig(**record)
        if config.allocation not in (None, *ALLOCATIONS):
            raise GatesMismatchError(
                f"{config_path} names allocation {config.allocation!r}; use one of "
                f"{', '.join(ALLOCATIONS)} or leave it out"
            )
        gates = cls(config)
        if model is not None:
            gates.check_fits(model, source=f"the retention gates in {directory}")
        tensors = load_file(directory / WEIGHTS_FILE)
        # Keep the saved dtype, so that what was saved is what is loaded, bit for bit.
        gates.to(next(iter(tensors.values())).dtype).load_state_dict(tensors)
        return gates
