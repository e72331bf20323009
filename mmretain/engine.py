"""Hooks in and out, chunked prefill, and the eviction schedule.

`retain(model, config)` runs a stock transformers model under a KV budget for the duration of a
``with`` block, through the model's public extension points only:

- the text model's attention implementation becomes mmretain's (see `mmretain.attention`);
- a forward pre-hook on each attention module hands the attention function the run, the cache
  the model was given and the layer's gate input;
- a forward pre-hook on the model gives each call a `RetentionCache` when it brings none and
  tags the prompt's tokens through the family's adapter;
- a forward pre-hook and an always-called forward hook on the decoder prefill in chunks and
  evict after each chunk or step;
- ``generate`` is wrapped (composing with whatever wrapper is already there, accelerate's
  included) to start each call on a fresh cache and to let the tags see its media inputs.

All per-sequence state lives on the cache, so one run serves any number of caches (branches of
one context, turns of a conversation). Everything is undone on exit, on every path.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from . import compat
from .adapters import adapter_for
from .attention import ATTENTION_NAME, CACHE_KWARG, HIDDEN_KWARG, RUN_KWARG
from .budget import allocate, latest_that_fit, protection_fits
from .cache import EMPTY, RetentionCache, RetentionLayer, RetentionStats
from .config import RetentionConfig
from .errors import BudgetWarning, ConfigError, RetentionStateError
from .policies.base import LayerView, attention_probs
from .tags import Modality
from .vision_saliency import VISION_ATTENTION_NAME

# Models a run is installed on: a second run on the same model would stack hooks.
_ACTIVE: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_MISSING = object()
# Decoding evicts below the budget by the buffer, at most this part of the budget: an eviction
# ranks the whole cache, so the room between two grows with the cache, while the free room it
# leaves (memory inside the budget) stays a small share of it.
ROOM_SHARE = 16


class RetentionRun:
    """One `retain` block: the model's hooks, the config and the policy.

    The run holds no per-sequence state: each forward reads and writes only the cache it is
    given. ``cache`` is the latest cache a forward used, kept for ``stats``.
    """

    def __init__(self, model: nn.Module, config: RetentionConfig):
        self.model = model
        self.config = config.for_model(model)
        # A run's own instance: binding (gates, their allocation) and any state a policy keeps
        # while it runs must not follow one run into another made from the same config.
        self.policy = copy.deepcopy(self.config.retention_policy)
        self.adapter = adapter_for(model)
        self.n_layers = self.adapter.num_layers
        self.n_heads = self.adapter.num_kv_heads
        self._handles: list[Any] = []
        self._wrapped: list[tuple[object, str, Any]] = []
        self._saved_attention: str | None = None
        self._saved_vision_attention: str | None = None
        self._vision_tap = None
        self._generate_inputs: dict[str, Any] = {}
        self._in_chunk = False
        self.cache = self.new_cache()

    @property
    def allocation_mode(self) -> str:
        """The allocation this run ranks with (its bound gates may name theirs)."""
        return self.config.allocation_for(self.policy)

    @property
    def stats(self) -> RetentionStats:
        """Stats of the latest cache a forward used."""
        return self.cache.stats

    def new_cache(self) -> RetentionCache:
        """A fresh, empty cache for this model: pass it as the model's cache to carry a
        conversation across ``generate`` calls."""
        return RetentionCache(self.n_layers)

    # -- hooks in and out ----------------------------------------------------------------------
    def install(self) -> None:
        if self.model in _ACTIVE or self.adapter.attention_implementation() == ATTENTION_NAME:
            raise RetentionStateError(
                f"mmretain.retain() is already active on this {type(self.model).__name__}; "
                "leave the first `with` block before entering another on the same model"
            )
        _ACTIVE.add(self.model)
        try:
            self._saved_attention = self.adapter.attention_implementation()
            self.adapter.set_attention_implementation(ATTENTION_NAME)
            for module in self.adapter.attention_modules:
                self._handles.append(
                    module.register_forward_pre_hook(self._attention_pre_hook, with_kwargs=True)
                )
            self._handles.append(
                self.model.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True)
            )
            decoder = self.adapter.decoder
            self._handles.append(
                decoder.register_forward_pre_hook(self._decoder_pre_hook, with_kwargs=True)
            )
            self._handles.append(
                decoder.register_forward_hook(
                    self._decoder_hook, with_kwargs=True, always_call=True
                )
            )
            self._wrap(self.model, "generate", self._fresh_cache_generate)
            if self.policy.uses_vision_saliency:
                self._open_vision_tap()
            self.policy.bind(self.model)
        except BaseException:
            self.remove()
            raise

    def _open_vision_tap(self) -> None:
        tap = self.adapter.vision_saliency_tap()
        if tap is None:
            raise ValueError(
                f"policy {self.policy.name!r} ranks visual tokens by the vision encoder's "
                f"attention, but {type(self.model).__name__} has no vision encoder; "
                "use a text policy such as snapkv"
            )
        self._saved_vision_attention = self.adapter.vision_attention_implementation()
        self.adapter.set_vision_attention_implementation(VISION_ATTENTION_NAME)
        self._vision_tap = tap.__enter__()

    def remove(self) -> None:
        if self._vision_tap is not None:
            self._vision_tap.__exit__(None, None, None)
            self._vision_tap = None
        if self._saved_vision_attention is not None:
            self.adapter.set_vision_attention_implementation(self._saved_vision_attention)
            self._saved_vision_attention = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for obj, attribute, previous in reversed(self._wrapped):
            if previous is _MISSING:
                delattr(obj, attribute)  # the class's method shows again
            else:
                setattr(obj, attribute, previous)  # another library's wrapper, as it was
        self._wrapped.clear()
        if self._saved_attention is not None:
            self.adapter.set_attention_implementation(self._saved_attention)
            self._saved_attention = None
        self.cache.hooked = False
        _ACTIVE.discard(self.model)

    def _wrap(self, obj: object, attribute: str, make: Callable[[Callable], Callable]) -> None:
        """Replace ``obj.attribute`` by ``make(current)``; whatever was there comes back on
        `remove`, so this composes with wrappers other libraries put on the instance."""
        previous = vars(obj).get(attribute, _MISSING)
        setattr(obj, attribute, make(getattr(obj, attribute)))
        self._wrapped.append((obj, attribute, previous))

    def _cache_for(self, given: Any) -> RetentionCache:
        """The cache a call runs on: the one given, or a fresh one when it brings none."""
        if given is None:
            given = self.new_cache()
        if not isinstance(given, RetentionCache):
            raise RetentionStateError(
                f"inside mmretain.retain() the model needs a RetentionCache, got "
                f"{type(given).__name__}; pass cache=run.new_cache(), or no cache for a fresh one"
            )
        self.cache = given
        return given

    def _attention_pre_hook(self, module, args, kwargs):
        kwargs[RUN_KWARG] = self
        kwargs[CACHE_KWARG] = compat.cache_in(kwargs)
        kwargs[HIDDEN_KWARG] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return args, kwargs

    def _model_pre_hook(self, module, args, kwargs):
        cache = self._cache_for(compat.cache_in(kwargs))
        compat.with_cache(kwargs, cache)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None and input_ids.shape[1] > 1:
            # generate may encode media itself and pass only the encoder outputs to forward;
            # the media's grid sizes are then among generate's own inputs.
            inputs = {**self._generate_inputs, **kwargs}
            cache.expect_tags(self.adapter.tags(input_ids, inputs))
        return args, kwargs

    def _fresh_cache_generate(self, generate: Callable) -> Callable:
        def fresh_cache_generate(*args, question_tokens: int = 0, **kwargs):
            """``generate`` on a fresh cache unless given one; ``question_tokens=N`` marks the
            prompt's last N tokens as the question (protected), the rest being compressed."""
            config = kwargs.get("generation_config")
            if kwargs.get("assistant_model") is not None or (
                config is not None
                and (config.prompt_lookup_num_tokens or config.assistant_early_exit)
            ):
                # Checked before the cache is touched: transformers would find out only after
                # the prefill, with a generic error.
                raise RetentionStateError(
                    "assisted decoding (assistant_model, prompt lookup, early exit) drafts tokens "
                    "and then crops the cache back, and evicted entries cannot be restored; "
                    "generate without it inside mmretain.retain()"
                )
            cache = self._cache_for(compat.cache_in(kwargs))
            compat.with_cache(kwargs, cache)
            if question_tokens:
                prompt = kwargs.get("input_ids", args[0] if args else None)
                if prompt is None:
                    prompt = kwargs["inputs_embeds"]
                total = prompt.shape[1]  # generate's input is the whole sequence, cache included
                cache.start_turn(max(total - question_tokens, 0), total)
            self._generate_inputs = kwargs
            try:
                return generate(*args, **kwargs)
            finally:
                self._generate_inputs = {}

        return fresh_cache_generate

    # -- prefill in chunks, evict after each ---------------------------------------------------
    def _decoder_pre_hook(self, module, args, kwargs):
        """Tag and admit the call's tokens; a long prompt goes in as its first chunk, the
        decoder hook runs the others."""
        if self._in_chunk:
            return None  # one of the decoder hook's own chunks, prepared already
        if args:
            kwargs["input_ids"], args = args[0], args[1:]
        cache = self._cache_for(compat.cache_in(kwargs))
        compat.with_cache(kwargs, cache)
        cache.hooked = True
        tokens = kwargs.get("inputs_embeds")
        tokens = kwargs["input_ids"] if tokens is None else tokens
        b, n = tokens.shape[:2]
        seen = cache.get_seq_length()
        cache.expect(seen + n)
        modality = cache.take_modality(b, n)
        valid = self._valid(kwargs.get("attention_mask"), b, n)
        if seen == 0:
            cache.row_start = valid.to(torch.int8).argmax(dim=1).cpu()
        prior = self._vision_prior(modality)
        step = self.config.chunk_tokens or n
        chunks = []
        for start in range(0, n, step):
            end = min(n, start + step)
            incoming = (
                modality[:, start:end],
                valid[:, start:end],
                None if prior is None else prior[:, start:end],
            )
            chunks.append((_slice_inputs(kwargs, start, end, n), incoming))
        cache.pending_chunks = chunks[1:]
        cache.set_incoming(*chunks[0][1])
        # Decoding is a generated token: a one-token prompt piece (the newline that closes a
        # LLaVA-OneVision video, a one-token turn) is prefill, brought to the full budget.
        cache.decoding = n == 1 and int(modality[0, 0]) == int(Modality.GENERATED)
        return args, chunks[0][0]

    def _decoder_hook(self, module, args, kwargs, output):
        """Evict after the call's first chunk, then prefill and evict the others."""
        if self._in_chunk:
            return None
        cache = compat.cache_in(kwargs)
        if not isinstance(cache, RetentionCache):
            return None  # the pre-hook refused the call
        try:
            if output is None:
                return None  # the forward raised: the error goes on as it is
            self.maybe_evict(cache, decoding=cache.decoding)
            hidden = [output.last_hidden_state]
            self._in_chunk = True
            try:
                for chunk_kwargs, incoming in cache.pending_chunks:
                    cache.set_incoming(*incoming)
                    hidden.append(module(*args, **chunk_kwargs).last_hidden_state)
                    self.maybe_evict(cache, decoding=False)
            finally:
                self._in_chunk = False
            if len(hidden) > 1:
                output.last_hidden_state = torch.cat(hidden, dim=1)
            return output
        finally:
            cache.pending_chunks = []
            cache.hooked = False

    def _vision_prior(self, modality: torch.Tensor) -> torch.Tensor | None:
        """Vision-encoder saliency laid on the prompt's visual positions (images, then videos,
        the order in which the encoder ran)."""
        if self._vision_tap is None:
            return None
        saliency = self._vision_tap.take()
        prior = torch.zeros(modality.shape)
        visual = (modality == int(Modality.IMAGE)) | (modality == int(Modality.VIDEO))
        if not bool(visual.any()):
            return prior
        order = torch.cat(
            [
                (modality == int(m)).flatten().nonzero().squeeze(1)
                for m in (Modality.IMAGE, Modality.VIDEO)
            ]
        )
        if saliency.numel() != order.numel():
            raise RetentionStateError(
                f"the vision encoder produced {saliency.numel()} token saliencies for "
                f"{order.numel()} visual tokens in the prompt; pass media and prompt together"
            )
        prior.view(-1)[order] = saliency.cpu()
        return prior

    @staticmethod
    def _valid(attention_mask, b: int, n: int) -> torch.Tensor:
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            return attention_mask[:, -n:].bool().cpu()
        return torch.ones(b, n, dtype=torch.bool)

    # -- signals for the policy ----------------------------------------------------------------
    def on_new_entries(
        self, layer: RetentionLayer, layer_idx: int, hidden: torch.Tensor | None, keys: torch.Tensor
    ) -> None:
        state = self.policy.init_state(layer_idx, hidden, keys)
        if state is None:
            return
        q = keys.shape[2]
        for h, stored in enumerate(layer.state):
            stored[:, -q:] = state[:, h].to(stored.dtype)

    def on_attention(
        self,
        layer: RetentionLayer,
        layer_idx: int,
        query: torch.Tensor,
        scaling: float,
        observed: bool = False,
    ) -> None:
        """After a layer's attention over its ``query`` rows (the latest tokens): keep them for a
        window policy and, unless the attention function handed them over already
        (``observed``), give an accumulating policy the queries' attention probabilities."""
        layer.scaling = scaling
        needs_probs = self.policy.accumulates and not observed
        if not self.policy.window and not needs_probs:
            return
        q = query.shape[2]
        query_positions = layer.latest_positions(q, query.device)
        if self.policy.window:
            window, positions = layer.window, layer.window_positions
            if window is None or layer.seen == q:
                window, positions = query[:, :, :0], query_positions[:0]
            window = torch.cat([window, query.detach()], dim=2)[:, :, -self.policy.window :]
            positions = torch.cat([positions, query_positions])[-self.policy.window :]
            layer.window, layer.window_positions = window, positions
        if needs_probs:
            group = query.shape[1] // len(layer.storage)
            heads = zip(layer.keys_by_head, layer.positions, layer.state, strict=True)
            for h, (keys, positions, state) in enumerate(heads):
                for start in range(0, q, 256):
                    rows = slice(start, start + 256)
                    probs = attention_probs(
                        query[:, h * group : (h + 1) * group, rows].float(),
                        keys.float(),
                        positions,
                        query_positions[rows],
                        scaling,
                    )
                    self.policy.observe(layer_idx, h, probs, state)

    # -- eviction ------------------------------------------------------------------------------
    def capacity(self, cache: RetentionCache) -> int:
        """Entries each batch row may keep under the budget.

        A fraction is taken of the whole prompt being prefilled (or of the tokens seen, once
        there are more), so the first chunks of a long prompt get the budget the prompt will
        have, not a fraction of the few tokens that came before them.
        """
        batch = cache.initialized_layers[0].storage[0][0].shape[0]
        tokens = max(cache.get_seq_length(), cache.prompt_tokens)
        budget = self.config.parsed_budget
        entry_bytes = cache.bytes_per_entry()
        entries = budget.entries(tokens, self.n_layers, self.n_heads, entry_bytes)
        if budget.kind != "bytes":
            return entries
        slots = self.n_layers * self.n_heads
        if entries // batch < slots:
            # Token and fraction budgets keep at least one position in every layer and head;
            # a byte budget below that would leave attention with nothing to read.
            raise ConfigError(
                f"a KV budget of {budget} holds {entries // batch} entries per sequence, fewer "
                f"than one per layer and KV head ({slots} entries of {entry_bytes} bytes for "
                f"this model); give at least {slots * entry_bytes * batch} bytes"
            )
        return entries // batch

    def maybe_evict(self, cache: RetentionCache, decoding: bool) -> None:
        """Evict when the cache holds more than the budget.

        After a prefill (or a chunk of one) the cache is brought to the budget. While decoding
        it is brought below it, by the buffer (at most a sixteenth of the budget), so that it
        fills up again for a few steps before the next eviction: the cache never holds more
        than the budget once a step is done.
        """
        if not self.policy.evicts or not cache.initialized_layers:
            return
        capacity = self.capacity(cache)
        layers = cache.initialized_layers
        # Sizes bound every row's entries: most steps need no count on the device (no sync).
        if sum(layer.stored() for layer in layers) <= capacity:
            if decoding:
                self._make_room(layers, capacity)
            return
        per_row = sum((p != EMPTY).sum(dim=1) for layer in layers for p in layer.positions)
        if int(per_row.max()) > capacity:
            if not decoding:
                self.evict(cache, capacity)
                return
            # The slack stays allocated as free room in every head, where the next tokens are
            # written in place: the cache then holds the budget, filled or not, and the decoding
            # steps until the next eviction copy nothing.
            room = self._decode_room(capacity)
            self.evict(cache, capacity - room * self.n_layers * self.n_heads, room)

    def _decode_room(self, capacity: int) -> int:
        """Free slots per head that decoding keeps for the next tokens: the buffer, at most a
        ``ROOM_SHARE``-th of the budget."""
        return min(self.config.buffer, capacity // ROOM_SHARE // (self.n_layers * self.n_heads))

    def _make_room(self, layers: list[RetentionLayer], capacity: int) -> None:
        """Decoding under the budget (a fraction budget grows with every token, a token budget
        may exceed the sequence): a head whose buffer is full gets free room inside the budget,
        so the next tokens are written in place instead of each copying the head to grow."""
        full = [(layer, layer.full_heads()) for layer in layers]
        count = sum(len(heads) for _, heads in full)
        if not count:
            return
        free = capacity - sum(layer.allocated() for layer in layers)
        room = min(self._decode_room(capacity), free // count)
        if room > 0:
            for layer, heads in full:
                if heads:
                    layer.reserve(heads, room)

    def evict(self, cache: RetentionCache, capacity: int, room: int = 0) -> None:
        """Score every entry, allocate ``capacity`` entries per batch row, free what is not
        kept, and leave ``room`` free slots in each head."""
        seen = cache.get_seq_length()
        layers = cache.initialized_layers
        views = [
            LayerView(
                layer=i,
                keys=layer.keys_by_head,
                positions=layer.positions,
                state=layer.state,
                modality=layer.modality,
                window=layer.window,
                window_positions=layer.window_positions,
                scaling=layer.scaling,
                tokens_seen=seen,
                relevance=cache.position_relevance,
            )
            for i, layer in enumerate(layers)
        ]
        scores = self.policy.score_layers(views)
        flat = _Flattened(views, scores)
        caps = self._modality_caps(capacity)
        keep_rows = []
        for r in range(flat.batch):
            positions = flat.positions[r]
            protected = self._protected(cache, positions, flat.modality[r], r, seen, capacity, flat)
            keep_rows.append(
                allocate(
                    flat.scores[r].masked_fill(positions == EMPTY, float("-inf")),
                    flat.layer,
                    flat.head,
                    capacity,
                    mode=self.allocation_mode,
                    n_layers=len(layers),
                    n_heads=self.n_heads,
                    protected=protected,
                    modality=flat.modality[r],
                    modality_caps=caps,
                    rank_normalize=not self.policy.comparable,
                    head_floor=self.config.head_floor,
                )
            )
        cache.keep(flat.unflatten(torch.stack(keep_rows)), room)

    def _protected(
        self,
        cache: RetentionCache,
        positions: torch.Tensor,
        modality: torch.Tensor,
        row: int,
        seen: int,
        capacity: int,
        flat: _Flattened,
    ) -> torch.Tensor:
        """The entries of one batch row that are kept whatever their score.

        Protections live inside the budget and take at most half of each share of it
        (`budget.protection_fits`), so the ranking always chooses at least half. When they do
        not fit, the recent window is lifted, then the sinks (their tokens are ranked with the
        rest), and then the question keeps only its last tokens; a `BudgetWarning` says so once
        per cache.
        """
        config = self.config
        start = int(cache.row_start[row]) if row < len(cache.row_start) else 0
        filled = positions != EMPTY
        shares = {
            "capacity": capacity,
            "mode": self.allocation_mode,
            "n_layers": len(cache.initialized_layers),
            "n_heads": self.n_heads,
        }
        question = (
            filled
            & (positions >= cache.turn[0])
            & (positions < cache.turn[1])
            & (modality == int(Modality.TEXT))
            if config.protect_turn
            else torch.zeros_like(filled)
        )
        others = {
            "recent window": filled & (positions >= seen - config.recent),
            "sinks": filled & (positions < start + config.sink),
        }
        lifted = []
        for name in [None, *others]:
            if name is not None:
                if bool(others[name].any()):
                    lifted.append(f"protection of the {name} is lifted")
                others[name] = torch.zeros_like(filled)
            protected = question | torch.stack(list(others.values())).any(dim=0)
            if protection_fits(protected, flat.layer, flat.head, **shares):
                break
        else:
            kept = latest_that_fit(question, positions, flat.layer, flat.head, **shares)
            if not bool(kept[question].all()):
                lifted.append("question keeps only its last tokens")
            protected = kept
        if lifted and set(lifted) - cache.lifted_protections:
            cache.lifted_protections.update(lifted)
            warnings.warn(
                f"the KV budget ({capacity // (self.n_layers * self.n_heads)} tokens now) cannot "
                "hold every protected token in half of it (the other half is the ranking's): "
                f"the {' and the '.join(lifted)}; raise the budget (or lower sink/recent) to "
                "keep them all",
                BudgetWarning,
                stacklevel=2,
            )
        return protected

    def _modality_caps(self, capacity: int) -> dict[int, int] | None:
        caps = self.config.modality_caps
        if not caps:
            return None
        by_name = {m.label: int(m) for m in Modality}
        unknown = set(caps) - set(by_name)
        if unknown:
            raise ValueError(
                f"unknown modality in modality_caps: {sorted(unknown)}; use {sorted(by_name)}"
            )
        return {by_name[name]: int(fraction * capacity) for name, fraction in caps.items()}


class _Flattened:
    """All entries of one eviction as flat rows per batch element, and the way back."""

    def __init__(self, views: list[LayerView], scores: list[list[torch.Tensor]]):
        self.lengths = [[p.shape[1] for p in view.positions] for view in views]
        self.batch = views[0].positions[0].shape[0]
        self.scores = torch.cat([s.float() for layer in scores for s in layer], dim=1)
        self.positions = torch.cat([p for view in views for p in view.positions], dim=1)
        self.modality = torch.cat([m for view in views for m in view.modality], dim=1)
        layer_ids, head_ids = [], []
        for i, lengths in enumerate(self.lengths):
            for h, length in enumerate(lengths):
                layer_ids.append(torch.full((length,), i, dtype=torch.long))
                head_ids.append(torch.full((length,), h, dtype=torch.long))
        self.layer = torch.cat(layer_ids)
        self.head = torch.cat(head_ids)

    def unflatten(self, keep: torch.Tensor) -> list[list[torch.Tensor]]:
        pieces = iter(torch.split(keep, [n for lengths in self.lengths for n in lengths], dim=1))
        return [[next(pieces) for _ in lengths] for lengths in self.lengths]


def _slice_inputs(kwargs: dict[str, Any], start: int, end: int, n: int) -> dict[str, Any]:
    """The decoder's inputs for tokens [start, end) of a call that brought n new tokens."""
    if start == 0 and end == n:
        return kwargs
    out = dict(kwargs)
    for name in ("input_ids", "inputs_embeds"):
        if out.get(name) is not None:
            out[name] = out[name][:, start:end]
    if out.get("position_ids") is not None:
        out["position_ids"] = out["position_ids"][..., start:end]
    visual = out.get("visual_pos_masks")
    if visual is not None:
        # Qwen3-VL DeepStack: one embedding row per visual token, in (batch, token) order.
        index = torch.full(visual.shape, -1, dtype=torch.long, device=visual.device)
        index[visual] = torch.arange(int(visual.sum()), device=visual.device)
        chunk = visual[:, start:end]
        out["visual_pos_masks"] = chunk
        out["deepstack_visual_embeds"] = [
            embeds[index[:, start:end][chunk]] for embeds in out["deepstack_visual_embeds"]
        ]
    mask = out.get("attention_mask")
    # mmretain's attention builds its own mask from entry positions; the 2-D padding mask is
    # only read for validity, so drop anything that cannot be sliced per chunk.
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        out["attention_mask"] = mask[:, : mask.shape[1] - n + end]
    else:
        out["attention_mask"] = None
    return out


@contextmanager
def retain(
    model: nn.Module, config: RetentionConfig | None = None, **options
) -> Iterator[RetentionRun]:
    """Run ``model`` under a KV budget inside a ``with`` block; yields the `RetentionRun`.

    ``options`` are `RetentionConfig` fields, for ``retain(model, policy="snapkv", budget=512)``.
    """
    if config is None:
        config = RetentionConfig(**options)
    elif options:
        raise ValueError("pass either a RetentionConfig or its fields as keywords, not both")
    run = RetentionRun(model, config)
    run.install()
    try:
        yield run
    finally:
        run.remove()
