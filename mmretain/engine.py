"""Hooks in and out, chunked prefill, and the eviction schedule.

`retain(model, config)` wraps a stock transformers model for the duration of a ``with`` block:

- the text model's attention implementation becomes mmretain's (see `mmretain.attention`);
- a pre-hook on each attention module hands it the run and the layer's gate input;
- a pre-hook on the model tags the prompt's tokens through the family's adapter;
- the decoder's forward is wrapped to prefill in chunks and evict after each chunk or step;
- ``generate`` is wrapped to start each call on a fresh `RetentionCache`.

Everything is undone on exit, on every path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .adapters import adapter_for
from .attention import ATTENTION_NAME, HIDDEN_KWARG, RUN_KWARG
from .budget import allocate
from .cache import EMPTY, RetentionCache, RetentionStats
from .config import RetentionConfig
from .errors import RetentionStateError
from .policies.base import LayerView, attention_probs
from .tags import Modality, TokenTags
from .vision_saliency import VISION_ATTENTION_NAME


class RetentionRun:
    """The state of one `retain` block: the model's hooks, the current cache and the policy."""

    def __init__(self, model: nn.Module, config: RetentionConfig):
        self.model = model
        self.config = config
        self.policy = config.retention_policy
        self.adapter = adapter_for(model)
        self.n_layers = self.adapter.num_layers
        self.n_heads = self.adapter.num_kv_heads
        self.prompts = 0
        self._handles: list[Any] = []
        self._patched: list[tuple[object, str]] = []
        self._saved_attention: str | None = None
        self._saved_vision_attention: str | None = None
        self._vision_tap = None
        self._pending_tags: TokenTags | None = None
        self._generate_inputs: dict[str, Any] = {}
        self._turn = (0, 0)
        self._media_stream = False
        self._row_start = torch.zeros(1, dtype=torch.long)
        self._windows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._scaling: dict[int, float] = {}
        self.cache = self.new_cache()

    @property
    def stats(self) -> RetentionStats:
        return self.cache.stats

    def new_cache(self) -> RetentionCache:
        """A fresh cache for this model; the run tracks the latest one it saw."""
        self.cache = RetentionCache(self.n_layers)
        self.cache.attached = self._handles != []
        self._windows.clear()
        return self.cache

    # -- hooks in and out ----------------------------------------------------------------------
    def install(self) -> None:
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
            self._patch(decoder, "forward", self._chunked_forward(decoder.forward))
            self._patch(self.model, "generate", self._fresh_cache_generate(self.model.generate))
            if self.policy.uses_vision_saliency:
                self._open_vision_tap()
            self.policy.bind(self.model)
            self.cache.attached = True
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
        for obj, attribute in reversed(self._patched):
            delattr(obj, attribute)  # drops the instance attribute; the class method shows again
        self._patched.clear()
        if self._saved_attention is not None:
            self.adapter.set_attention_implementation(self._saved_attention)
            self._saved_attention = None
        self.cache.attached = False

    def _patch(self, obj: object, attribute: str, replacement: Callable) -> None:
        if attribute in vars(obj):
            raise RuntimeError(f"{type(obj).__name__}.{attribute} is already wrapped")
        setattr(obj, attribute, replacement)
        self._patched.append((obj, attribute))

    def _attention_pre_hook(self, module, args, kwargs):
        kwargs[RUN_KWARG] = self
        kwargs[HIDDEN_KWARG] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return args, kwargs

    def _model_pre_hook(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None and input_ids.shape[1] > 1:
            # generate may encode media itself and pass only the encoder outputs to forward;
            # the media's grid sizes are then among generate's own inputs.
            self._pending_tags = self.adapter.tags(input_ids, {**self._generate_inputs, **kwargs})
        return args, kwargs

    def _fresh_cache_generate(self, generate: Callable) -> Callable:
        def fresh_cache_generate(*args, **kwargs):
            if kwargs.get("past_key_values") is None:
                kwargs["past_key_values"] = self.new_cache()
            self._generate_inputs = kwargs
            try:
                return generate(*args, **kwargs)
            finally:
                self._generate_inputs = {}

        return fresh_cache_generate

    # -- prefill in chunks, evict after each ---------------------------------------------------
    def _chunked_forward(self, forward: Callable) -> Callable:
        def chunked_forward(*args, **kwargs):
            if args:
                kwargs["input_ids"] = args[0]
            cache = kwargs.get("past_key_values")
            if not isinstance(cache, RetentionCache):
                cache = self.cache
                kwargs["past_key_values"] = cache
            self.cache = cache
            cache.attached = True
            tokens = kwargs.get("inputs_embeds")
            tokens = kwargs["input_ids"] if tokens is None else tokens
            b, n = tokens.shape[:2]
            seen = cache.get_seq_length()
            cache.expect(seen + n)
            tags = self._take_tags(b, n, seen)
            valid = self._valid(kwargs.get("attention_mask"), b, n)
            starts_turn = n > 1 and not self._media_stream
            if starts_turn and bool((tags.modality == int(Modality.TEXT)).any()):
                self.prompts += 1
                self._turn = (seen, seen + n)
            if seen == 0:
                self._row_start = valid.to(torch.int8).argmax(dim=1).cpu()
            prior = self._vision_prior(tags)
            chunk = self.config.chunk_tokens or n
            hidden = []
            for start in range(0, n, chunk):
                end = min(n, start + chunk)
                cache.set_incoming(
                    tags.modality[:, start:end],
                    valid[:, start:end],
                    None if prior is None else prior[:, start:end],
                )
                out = forward(**_slice_inputs(kwargs, start, end, n))
                hidden.append(out.last_hidden_state)
                self.maybe_evict(cache, decoding=n == 1)
            if len(hidden) > 1:
                out.last_hidden_state = torch.cat(hidden, dim=1)
            return out

        return chunked_forward

    @contextmanager
    def media_stream(self) -> Iterator[None]:
        """Forwards inside continue the current turn (the chunks of one video)."""
        self._media_stream = True
        try:
            yield
        finally:
            self._media_stream = False

    def expect_tags(self, tags: TokenTags) -> None:
        """Tags of the next forward's tokens, for calls that bring embeddings, not ids."""
        self._pending_tags = tags

    def _take_tags(self, b: int, n: int, seen: int) -> TokenTags:
        tags, self._pending_tags = self._pending_tags, None
        if tags is not None and tuple(tags.shape) == (b, n):
            return tags
        return TokenTags.text(b, n, Modality.GENERATED if seen and n == 1 else Modality.TEXT)

    def _vision_prior(self, tags: TokenTags) -> torch.Tensor | None:
        """Vision-encoder saliency laid on the prompt's visual positions (images, then videos,
        the order in which the encoder ran)."""
        if self._vision_tap is None:
            return None
        saliency = self._vision_tap.take()
        prior = torch.zeros(tags.shape)
        visual = (tags.modality == int(Modality.IMAGE)) | (tags.modality == int(Modality.VIDEO))
        if not bool(visual.any()):
            return prior
        order = torch.cat(
            [
                (tags.modality == int(m)).flatten().nonzero().squeeze(1)
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
    def on_new_entries(self, layer_idx: int, hidden: torch.Tensor | None, keys: torch.Tensor):
        state = self.policy.init_state(layer_idx, hidden, keys)
        if state is None:
            return
        layer = self.cache.layers[layer_idx]
        q = keys.shape[2]
        for h, stored in enumerate(layer.state):
            stored[:, -q:] = state[:, h].to(stored.dtype)

    def on_attention(
        self, layer_idx: int, query: torch.Tensor, query_positions: torch.Tensor, scaling: float
    ) -> None:
        self._scaling[layer_idx] = scaling
        layer = self.cache.layers[layer_idx]
        if self.policy.window:
            window, positions = self._windows.get(layer_idx, (None, None))
            if window is None or layer.seen == query.shape[2]:
                window, positions = query[:, :, :0], query_positions[:0]
            window = torch.cat([window, query.detach()], dim=2)[:, :, -self.policy.window :]
            positions = torch.cat([positions, query_positions])[-self.policy.window :]
            self._windows[layer_idx] = (window, positions)
        if self.policy.accumulates:
            group = query.shape[1] // len(layer.keys_by_head)
            for h, keys in enumerate(layer.keys_by_head):
                for start in range(0, query.shape[2], 256):
                    rows = slice(start, start + 256)
                    probs = attention_probs(
                        query[:, h * group : (h + 1) * group, rows].float(),
                        keys.float(),
                        layer.positions[h],
                        query_positions[rows],
                        scaling,
                    )
                    self.policy.observe(layer_idx, h, probs, layer.state[h])

    # -- eviction ------------------------------------------------------------------------------
    def capacity(self, cache: RetentionCache) -> int:
        """Entries each batch row may keep under the budget.

        A fraction is taken of the whole prompt being prefilled (or of the tokens seen, once
        there are more), so the first chunks of a long prompt get the budget the prompt will
        have, not a fraction of the few tokens that came before them.
        """
        batch = cache.initialized_layers[0].keys_by_head[0].shape[0]
        tokens = max(cache.get_seq_length(), cache.prompt_tokens)
        entries = self.config.parsed_budget.entries(
            tokens, self.n_layers, self.n_heads, cache.bytes_per_entry()
        )
        return entries // batch if self.config.parsed_budget.kind == "bytes" else entries

    def maybe_evict(self, cache: RetentionCache, decoding: bool) -> None:
        if not self.policy.evicts or not cache.initialized_layers:
            return
        capacity = self.capacity(cache)
        slack = self.config.buffer * self.n_layers * self.n_heads if decoding else 0
        per_row = sum(
            (p != EMPTY).sum(dim=1) for layer in cache.initialized_layers for p in layer.positions
        )
        if int(per_row.max()) > capacity + slack:
            self.evict(cache, capacity)

    def evict(self, cache: RetentionCache, capacity: int) -> None:
        """Score every entry, allocate the budget per batch row, and free what is not kept."""
        seen = cache.get_seq_length()
        layers = cache.initialized_layers
        views = [
            LayerView(
                layer=i,
                keys=layer.keys_by_head,
                positions=layer.positions,
                state=layer.state,
                modality=layer.modality,
                window=self._windows.get(i, (None, None))[0],
                window_positions=self._windows.get(i, (None, None))[1],
                scaling=self._scaling.get(i, 1.0),
                tokens_seen=seen,
            )
            for i, layer in enumerate(layers)
        ]
        scores = self.policy.score_layers(views)
        flat = _Flattened(views, scores)
        caps = self._modality_caps(capacity)
        keep_rows = []
        for r in range(flat.batch):
            positions = flat.positions[r]
            protected = self._protected(positions, flat.modality[r], r, seen)
            row_capacity = capacity
            if self.config.parsed_budget.kind == "fraction":
                # A fraction of a short prefix can be less than the sinks and recent window;
                # protected entries then stand above the fraction instead of failing.
                row_capacity = max(capacity, int(protected.sum()))
            keep_rows.append(
                allocate(
                    flat.scores[r].masked_fill(positions == EMPTY, float("-inf")),
                    flat.layer,
                    flat.head,
                    row_capacity,
                    mode=self.config.allocation,
                    n_layers=len(layers),
                    n_heads=self.n_heads,
                    protected=protected,
                    modality=flat.modality[r],
                    modality_caps=caps,
                    rank_normalize=not self.policy.comparable,
                )
            )
        cache.keep(flat.unflatten(torch.stack(keep_rows)))

    def _protected(
        self, positions: torch.Tensor, modality: torch.Tensor, row: int, seen: int
    ) -> torch.Tensor:
        config = self.config
        start = int(self._row_start[row]) if row < len(self._row_start) else 0
        protected = (positions < start + config.sink) | (positions >= seen - config.recent)
        if config.protect_turn:
            in_turn = (positions >= self._turn[0]) & (positions < self._turn[1])
            protected |= in_turn & (modality == int(Modality.TEXT))
        return protected & (positions != EMPTY)

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
