"""`RetentionCache`: a transformers `Cache` whose (layer, KV head) rows can be evicted for real.

Each KV head of each layer is its own set of tensors, so heads may keep different numbers of
entries and an evicted entry's memory is released, not hidden behind a mask. Next to every entry
the cache keeps its original sequence position, its modality code and one float of policy state
(the policy decides what that float means: accumulated attention, a gate's log-retention, ...).

The cache also holds everything else the sequence's future depends on: each layer's window of
recent queries, the span of the current turn, where each batch row starts, the prompt length a
fraction budget is taken of. So a copy of the cache (``copy.deepcopy``) is a complete branch:
two copies evolve independently whatever is asked of either.

The cache stores; it never decides what to evict (see `mmretain.budget.allocate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .errors import RetentionStateError
from .tags import Modality, TokenTags

EMPTY = -1  # position of a slot that holds no entry (batch padding, prompt padding)
_POSITION_DTYPE = torch.int32
_STATE_DTYPE = torch.float32
_MODALITY_DTYPE = torch.int8
METADATA_BYTES_PER_ENTRY = (
    torch.empty((), dtype=_POSITION_DTYPE).element_size()
    + torch.empty((), dtype=_STATE_DTYPE).element_size()
    + torch.empty((), dtype=_MODALITY_DTYPE).element_size()
)


@dataclass
class RetentionStats:
    """What the cache holds and has seen. Entry counts are summed over the batch."""

    tokens_seen: int = 0
    entries_kept: int = 0
    bytes_held: int = 0
    peak_bytes_held: int = 0
    bytes_full_cache: int = 0
    kept_by_modality: dict[str, int] = field(default_factory=dict)
    kept_by_layer: list[int] = field(default_factory=list)
    kept_by_head: list[list[int]] = field(default_factory=list)
    seen_by_modality: dict[str, int] = field(default_factory=dict)
    evictions: int = 0
    # Times a conversation was prefilled again whole because it did not extend the cached one.
    restarts: int = 0

    @property
    def kv_fraction(self) -> float:
        """Bytes held relative to this cache holding every token it saw (entries at the same
        cost, metadata included): 1.0 for a full cache."""
        return self.bytes_held / self.bytes_full_cache if self.bytes_full_cache else 1.0

    @property
    def slots(self) -> int:
        """(layer, KV head) pairs: a token kept in all of them is this many entries."""
        return sum(len(heads) for heads in self.kept_by_head) or 1

    @property
    def tokens_kept_total(self) -> float:
        """Entries kept over `slots`: the tokens' worth of cache held, all modalities."""
        return self.entries_kept / self.slots

    @property
    def tokens_kept(self) -> dict[str, float]:
        """Entries kept per modality over `slots`: a token kept everywhere counts once."""
        return {name: kept / self.slots for name, kept in self.kept_by_modality.items()}


@dataclass
class Incoming:
    """What the engine tells the cache about the tokens of the next forward call."""

    modality: torch.Tensor  # int8 [b, q]
    valid: torch.Tensor  # bool [b, q]; False for prompt padding
    prior: torch.Tensor | None = None  # float [b, q]: initial state, e.g. vision saliency
    all_valid: bool = True  # no padding among them (read once per forward, not per head)
    # The entries' positions, initial state and modality as every layer stores them, built by
    # the first layer of the forward on each device and reused by the others.
    entries: dict[tuple[int, torch.device], tuple[torch.Tensor, ...]] = field(default_factory=dict)

    def entries_on(self, seen: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(positions int32, state float32, modality int8), each [b, q], on ``device``."""
        key = (seen, device)
        if key not in self.entries:
            b, q = self.modality.shape
            valid = self.valid.to(device)
            positions = torch.arange(seen, seen + q, dtype=_POSITION_DTYPE, device=device)
            positions = torch.where(valid, positions.expand(b, q), EMPTY)
            state = (
                torch.zeros((b, q), dtype=_STATE_DTYPE, device=device)
                if self.prior is None
                else self.prior.to(device, _STATE_DTYPE)
            )
            self.entries[key] = (positions, state, self.modality.to(device))
        return self.entries[key]


class RetentionLayer(DynamicLayer):
    """One decoder layer's cache: per KV head, keys/values [b, L_h, d] plus per-entry metadata.

    Each head's five tensors (keys, values, positions, state, modality) may hold room beyond
    its ``lengths[h]`` entries: eviction while decoding leaves the buffer's worth of free slots
    allocated, so the next tokens are written in place instead of copying the cache at every
    step. The room is counted in the bytes held (it is memory), and comes out of the budget.
    ``keys_by_head`` and the other per-head lists are views of the filled part.

    ``update`` appends the new tokens to every head and returns the new states unchanged: the
    mmretain attention function reads the ragged per-head storage directly, so no padded copy of
    the whole cache is ever built.
    """

    # Evicted entries cannot be restored, so generate must not plan on cropping (assisted
    # decoding, MPS's past recording): `crop` raises if it is called anyway.
    is_croppable = False

    def __init__(self, owner: RetentionCache):
        super().__init__()
        self.owner = owner
        self.seen = 0
        # Per head: [keys, values, positions, state, modality], each [b, capacity, ...].
        self.storage: list[list[torch.Tensor]] = []
        self.lengths: list[int] = []  # filled slots per head, the same for every batch row
        # nbytes(), kept up to date at every update and eviction (the owner sums the layers'
        # changes, so its peak costs nothing per update); bytes of one entry, set at the first.
        self.held_bytes = 0
        self.entry_bytes = 0
        # Whether any head holds an empty slot (padding): without one, attention needs no mask
        # for a decoded token, and a first prefill runs the fused causal kernel.
        self.has_empty = False
        # The latest post-RoPE queries [b, heads, W, d] and their positions [W], for policies
        # that score with an observation window (SnapKV); and the layer's attention scale.
        self.window: torch.Tensor | None = None
        self.window_positions: torch.Tensor | None = None
        self.scaling = 1.0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, n_heads, _, d = key_states.shape
        self.entry_bytes = (
            d * key_states.element_size()
            + value_states.shape[-1] * value_states.element_size()
            + METADATA_BYTES_PER_ENTRY
        )
        self.storage = [
            [
                key_states.new_empty((b, 0, d)),
                value_states.new_empty((b, 0, value_states.shape[-1])),
                torch.empty((b, 0), dtype=_POSITION_DTYPE, device=self.device),
                torch.empty((b, 0), dtype=_STATE_DTYPE, device=self.device),
                torch.empty((b, 0), dtype=_MODALITY_DTYPE, device=self.device),
            ]
            for _ in range(n_heads)
        ]
        self.lengths = [0] * n_heads
        self.is_initialized = True

    # -- the filled part of each head, as views --------------------------------------------------
    def _filled(self, field: int) -> list[torch.Tensor]:
        return [head[field][:, :n] for head, n in zip(self.storage, self.lengths, strict=True)]

    @property
    def keys_by_head(self) -> list[torch.Tensor]:
        return self._filled(0)

    @property
    def values_by_head(self) -> list[torch.Tensor]:
        return self._filled(1)

    @property
    def positions(self) -> list[torch.Tensor]:
        return self._filled(2)

    @property
    def state(self) -> list[torch.Tensor]:
        """Per head [b, L_h] float policy state; a policy may update it in place."""
        return self._filled(3)

    @property
    def modality(self) -> list[torch.Tensor]:
        return self._filled(4)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.owner.hooked:
            raise RetentionStateError(
                "RetentionCache was used outside mmretain.retain(...): its ragged storage needs "
                "the mmretain attention function; run the model inside "
                "`with mmretain.retain(model, cfg)`."
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, _, q, _ = key_states.shape
        incoming = self.owner.incoming_for(b, q, self.seen)
        metadata = incoming.entries_on(self.seen, key_states.device)
        grown = 0
        heads = zip(self.storage, key_states.unbind(1), value_states.unbind(1), strict=True)
        for h, (head, keys, values) in enumerate(heads):
            n = self.lengths[h]
            if head[0].shape[1] - n >= q:  # free room: written in place
                for stored, new in zip(head, (keys, values, *metadata), strict=True):
                    stored[:, n : n + q] = new
            else:
                grown += n + q - head[0].shape[1]
                head[:] = [
                    torch.cat([stored[:, :n], new], dim=1)
                    for stored, new in zip(head, (keys, values, *metadata), strict=True)
                ]
            self.lengths[h] = n + q
        self.seen += q
        self.has_empty |= not incoming.all_valid
        if grown:
            self._hold(self.held_bytes + b * grown * self.entry_bytes)
        return key_states, value_states

    def _hold(self, nbytes: int) -> None:
        """The layer now holds ``nbytes``; the owner's total and peak follow."""
        self.owner.note_bytes(nbytes - self.held_bytes)
        self.held_bytes = nbytes

    def latest_positions(self, q: int, device: torch.device) -> torch.Tensor:
        """Sequence positions [q] of the latest ``q`` tokens (a call's queries)."""
        return torch.arange(self.seen - q, self.seen, device=device)

    # -- sizes ---------------------------------------------------------------------------------
    def get_seq_length(self) -> int:
        """Tokens seen, not entries stored: positions of later tokens must not shift."""
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = max(self.lengths, default=0)
        return stored + query_length, self.seen - stored

    def entries(self) -> int:
        return sum(int((p != EMPTY).sum()) for p in self.positions)

    def nbytes(self) -> int:
        """Bytes of every tensor the layer holds, free room included, counted from sizes."""
        return sum(t.numel() * t.element_size() for head in self.storage for t in head)

    def allocated(self) -> int:
        """Slots allocated per batch row, summed over heads: filled and free room alike."""
        return sum(head[0].shape[1] for head in self.storage)

    def full_heads(self) -> list[int]:
        """Heads with no free room left: the next token would copy them to grow."""
        heads = zip(self.storage, self.lengths, strict=True)
        return [h for h, (head, n) in enumerate(heads) if head[0].shape[1] == n]

    def reserve(self, heads: list[int], room: int) -> None:
        """Give each of ``heads`` ``room`` free slots after its entries (one copy of each)."""
        for h in heads:
            self._select(h, lambda t: t, room)
        self._hold(self.nbytes())

    def stored(self) -> int:
        """Slots filled per batch row, summed over heads (empty slots of a padded row
        included): an upper bound on any row's entries, read from sizes alone."""
        return sum(self.lengths)

    # -- eviction ------------------------------------------------------------------------------
    def keep(self, masks: list[torch.Tensor], room: int = 0) -> None:
        """Keep the entries where ``masks[h]`` [b, L_h] is True; free the rest, leaving
        ``room`` free slots per head for the tokens to come."""
        padded = False  # empty slots go with the eviction, but rows keeping unequal counts pad
        for h, (mask, positions) in enumerate(zip(masks, self.positions, strict=True)):
            mask = mask & (positions != EMPTY)
            if mask.shape[0] == 1:
                index = mask[0].nonzero().squeeze(1)
                self._select(h, lambda t, index=index: t.index_select(1, index), room)
                continue
            # Rows keep different counts: pack kept entries to the left, pad to the longest row.
            counts = mask.sum(1)
            width = int(counts.max())
            padded |= int(counts.min()) < width
            order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
            filled = torch.arange(width, device=mask.device)[None, :] < counts[:, None]

            def gather(t, order=order, filled=filled):
                idx = order if t.dim() == 2 else order[..., None].expand(-1, -1, t.shape[-1])
                out = t.gather(1, idx)
                pad = filled if t.dim() == 2 else filled[..., None]
                fill = EMPTY if t.dtype == _POSITION_DTYPE else 0
                return torch.where(pad, out, torch.full_like(out, fill))

            self._select(h, gather, room)
        self.has_empty = padded
        self._hold(self.nbytes())

    def _select(self, h: int, fn, room: int = 0) -> None:
        """Head ``h``'s filled entries become ``fn`` of them, followed by ``room`` free slots."""
        head, n = self.storage[h], self.lengths[h]
        chosen = [fn(t[:, :n]) for t in head]
        kept = chosen[0].shape[1]
        if room:
            rebuilt = []
            for t in chosen:
                out = t.new_empty((t.shape[0], kept + room, *t.shape[2:]))
                out[:, :kept] = t
                rebuilt.append(out)
            head[:] = rebuilt
        else:
            head[:] = [t.contiguous() for t in chosen]
        self.lengths[h] = kept

    def reset(self) -> None:
        self.seen = 0
        self.window = self.window_positions = None
        self.scaling = 1.0
        self.storage, self.lengths = [], []
        self._hold(0)
        self.has_empty = False
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        raise RetentionStateError(
            "RetentionCache cannot be cropped (assisted decoding): evicted entries cannot be "
            "rolled back. Generate without an assistant model inside mmretain.retain()."
        )

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._reorder(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for h in range(len(self.storage)):
            self._select(h, lambda t: t.repeat_interleave(repeats, dim=0))
        self._hold(self.nbytes())

    def _reorder(self, indices: torch.Tensor) -> None:
        for h in range(len(self.storage)):
            self._select(h, lambda t: t.index_select(0, indices.to(t.device)))
        self._hold(self.nbytes())


class RetentionCache(Cache):
    """A `Cache` for `generate` and plain forward calls whose entries can be evicted per head.

    Build it with the number of decoder layers (or get one from ``run.new_cache()``); layers
    fill in lazily at their first update. ``incoming`` describes the tokens of the next forward
    (set by the engine); without it, new tokens count as valid text (or generated, once the
    cache is not empty).
    """

    def __init__(self, num_layers: int):
        super().__init__(layers=[])
        self.layers = [RetentionLayer(self) for _ in range(num_layers)]
        # True only while a retention run's hooks drive a forward over this cache.
        self.hooked = False
        self.incoming: Incoming | None = None
        self.held_bytes = 0  # the layers' held_bytes, summed as they change
        self.peak_bytes = 0
        self.evictions = 0
        # Length the prompt being prefilled will reach, known before its first chunk goes in.
        self.prompt_tokens = 0
        self._seen_by_modality = [0] * len(Modality)
        # Per-sequence state the engine keeps here, so that a copy of the cache is a branch.
        self.turn = (0, 0)  # [start, end) of the latest prompt: its text is protected
        self.prompts = 0  # prompts (turns) prefilled so far
        self.row_start = torch.zeros(1, dtype=torch.long)  # first non-padding token per row
        self.pending_tags: TokenTags | None = None  # tags of the next forward's tokens
        self.lifted_protections: set[str] = set()  # protections a warning has named
        self.restarts = 0  # conversations before this one that this cache replaced
        # Question relevance of the video entry at each position (a relevance prior's marks);
        # positions past its end, or never marked, read 0.
        self.position_relevance = torch.zeros(0)
        # The call in flight: the chunks of a long prompt still to prefill, and whether it
        # decodes one token (eviction then waits for the buffer to fill).
        self.pending_chunks: list[Any] = []
        self.decoding = False

    # -- what the engine tells the cache -------------------------------------------------------
    def replaces(self, previous: RetentionCache) -> None:
        """This cache starts over a conversation that ``previous`` held: the restart counts."""
        self.restarts = previous.restarts + 1

    def expect_tags(self, tags: TokenTags) -> None:
        """Tags of the next forward's tokens, for calls that bring embeddings, not ids."""
        self.pending_tags = tags

    def take_modality(self, b: int, n: int) -> torch.Tensor:
        """Modality codes int8 [b, n] of a forward of ``n`` tokens per row: the announced tags'
        when they fit, text (or generated, once the cache is not empty) else."""
        tags, self.pending_tags = self.pending_tags, None
        if tags is not None and tuple(tags.shape) == (b, n):
            return tags.modality
        generated = self.get_seq_length() and n == 1
        code = Modality.GENERATED if generated else Modality.TEXT
        return torch.full((b, n), int(code), dtype=_MODALITY_DTYPE)

    def mark_relevance(self, start: int, values: torch.Tensor) -> None:
        """Positions [start, start + len(values)) hold video entries of that relevance."""
        end = start + values.numel()
        if self.position_relevance.numel() < end:
            grown = torch.zeros(end)
            grown[: self.position_relevance.numel()] = self.position_relevance
            self.position_relevance = grown
        self.position_relevance[start:end] = values.float().cpu()

    def start_turn(self, start: int, end: int) -> None:
        """Tokens [start, end) are the latest question: with ``protect_turn`` its text is kept
        (inside the budget; see `RetentionRun.evict`)."""
        self.turn = (start, end)
        self.prompts += 1

    def set_incoming(
        self, modality: torch.Tensor, valid: torch.Tensor, prior: torch.Tensor | None = None
    ) -> None:
        valid = valid.to(torch.bool)
        all_valid = bool(valid.all())
        self.incoming = Incoming(modality.to(_MODALITY_DTYPE), valid, prior, all_valid)
        if modality.numel() == 1:  # a decoded token: one code, no histogram to build
            self._seen_by_modality[int(modality)] += all_valid
            return
        codes = (modality if all_valid else modality[valid]).flatten().long().cpu()
        counts = torch.bincount(codes, minlength=len(Modality))[: len(Modality)].tolist()
        seen = zip(self._seen_by_modality, counts, strict=True)
        self._seen_by_modality = [before + new for before, new in seen]

    def incoming_for(self, b: int, q: int, seen: int) -> Incoming:
        """What the engine announced for this forward's ``b`` × ``q`` tokens; without that,
        they count as valid text (or generated, once the cache is not empty)."""
        if self.incoming is None or self.incoming.modality.shape != (b, q):
            code = Modality.GENERATED if seen else Modality.TEXT
            modality = torch.full((b, q), int(code), dtype=_MODALITY_DTYPE)
            self.incoming = Incoming(modality, torch.ones(b, q, dtype=torch.bool))
        return self.incoming

    def expect(self, tokens: int) -> None:
        """The prompt now being prefilled reaches ``tokens`` tokens in all (a fraction budget
        is taken of it)."""
        self.prompt_tokens = max(self.prompt_tokens, tokens)

    def note_bytes(self, change: int) -> None:
        """A layer's holding changed by ``change`` bytes."""
        self.held_bytes += change
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)

    # -- reads ---------------------------------------------------------------------------------
    @property
    def initialized_layers(self) -> list[RetentionLayer]:
        return [layer for layer in self.layers if layer.is_initialized]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].seen if layer_idx < len(self.layers) else 0

    def entries(self) -> int:
        return sum(layer.entries() for layer in self.layers)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def bytes_per_entry(self) -> int:
        """Bytes one (layer, head, position) entry costs: K + V + metadata."""
        layer = next(iter(self.initialized_layers), None)
        return 0 if layer is None else layer.entry_bytes

    def kv_bytes_per_entry(self) -> int:
        """Bytes of one entry's key and value alone."""
        entry = self.bytes_per_entry()
        return entry - METADATA_BYTES_PER_ENTRY if entry else 0

    @property
    def stats(self) -> RetentionStats:
        layers = self.initialized_layers
        kept_by_head = [[int((p != EMPTY).sum()) for p in layer.positions] for layer in layers]
        by_modality = torch.zeros(len(Modality), dtype=torch.long)
        for layer in layers:
            for p, m in zip(layer.positions, layer.modality, strict=True):
                codes = m[p != EMPTY].long().cpu()
                by_modality += torch.bincount(codes, minlength=len(Modality))[: len(Modality)]
        batch = layers[0].storage[0][0].shape[0] if layers else 0
        n_heads = sum(len(layer.storage) for layer in layers)
        seen = self.get_seq_length()
        return RetentionStats(
            tokens_seen=seen,
            entries_kept=sum(map(sum, kept_by_head)),
            bytes_held=self.nbytes(),
            peak_bytes_held=self.peak_bytes,
            bytes_full_cache=seen * batch * n_heads * self.bytes_per_entry(),
            kept_by_modality={m.label: int(by_modality[m]) for m in Modality},
            kept_by_layer=[sum(heads) for heads in kept_by_head],
            kept_by_head=kept_by_head,
            seen_by_modality={m.label: self._seen_by_modality[m] for m in Modality},
            evictions=self.evictions,
            restarts=self.restarts,
        )

    # -- writes --------------------------------------------------------------------------------
    def keep(self, masks: list[list[torch.Tensor]], room: int = 0) -> None:
        """Keep ``masks[layer][head]`` [b, L] entries everywhere, free the others; each head
        keeps ``room`` free slots for the tokens to come."""
        for layer, layer_masks in zip(self.initialized_layers, masks, strict=True):
            layer.keep(layer_masks, room)
        self.evictions += 1

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for layer in self.initialized_layers:
            layer._reorder(beam_idx)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        self.incoming = None
        self.peak_bytes = 0
        self.evictions = 0
        self.prompt_tokens = 0
        self._seen_by_modality = [0] * len(Modality)
        self.turn, self.prompts = (0, 0), 0
        self.row_start = torch.zeros(1, dtype=torch.long)
        self.pending_tags = None
        self.lifted_protections = set()
        self.restarts = 0

    @property
    def is_compileable(self) -> bool:
        # A compileable cache makes generate build 4-D masks itself; ours builds its own.
        return False
