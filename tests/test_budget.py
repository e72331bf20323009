"""The memory budget and the allocation of cache entries under it."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmretain.budget import ALLOCATIONS, Budget, allocate

INF = math.inf
FAST = settings(max_examples=200, deadline=None)

# ---------------------------------------------------------------------------------------------
# Budget.parse and Budget.entries


@pytest.mark.parametrize(
    ("given_value", "kind", "value"),
    [
        (1024, "tokens", 1024),
        (1, "tokens", 1),
        (0.1, "fraction", 0.1),
        (1.0, "fraction", 1.0),
        ("512MiB", "bytes", 512 * 2**20),
        ("1GiB", "bytes", 2**30),
        ("1gib", "bytes", 2**30),
        ("300MB", "bytes", 300e6),
        ("300 mb", "bytes", 300e6),
        ("2048B", "bytes", 2048),
        ("1.5GiB", "bytes", 1.5 * 2**30),
        ("4KiB", "bytes", 4096),
        ("2kb", "bytes", 2000),
        ("1TiB", "bytes", 2**40),
        (" 64 ", "tokens", 64),
        ("0.25", "fraction", 0.25),
    ],
)
def test_parse_accepts_tokens_fractions_and_byte_sizes(given_value, kind, value):
    budget = Budget.parse(given_value)
    assert budget == Budget(kind, value)
    assert Budget.parse(budget) is budget


@pytest.mark.parametrize(
    "bad",
    [
        0,
        -3,
        0.0,
        -0.5,
        1.5,
        2.0,
        math.nan,
        math.inf,
        True,
        False,
        None,
        [1],
        "",
        "abc",
        "12XB",
        "512 MiBs",
        "-5",
        "0B",
        "MiB",
        "1.2.3GiB",
        "1e3",
        "2.5",
    ],
)
def test_parse_rejects_bad_values_with_the_accepted_forms(bad):
    with pytest.raises(ValueError) as info:
        Budget.parse(bad)
    message = str(info.value)
    assert repr(bad) in message or str(bad) in message
    assert "1024" in message and "0.1" in message and "512MiB" in message


def test_parse_error_reads_like_the_spec():
    with pytest.raises(ValueError, match=r"budget must be > 0, got -3; give tokens \(1024\)"):
        Budget.parse(-3)


def test_unknown_unit_is_named():
    with pytest.raises(ValueError, match="unknown unit 'XB'"):
        Budget.parse("12XB")


def test_a_budget_cannot_be_built_invalid():
    with pytest.raises(ValueError):
        Budget("fraction", 2.0)
    with pytest.raises(ValueError):
        Budget("tokens", -1.0)
    with pytest.raises(ValueError):
        Budget("pages", 1.0)  # type: ignore[arg-type]


def test_entries_of_a_token_budget_cover_every_layer_and_head():
    assert Budget.parse(1024).entries(5000, n_layers=28, n_heads=4, bytes_per_entry=256) == (
        1024 * 28 * 4
    )


def test_entries_of_a_fraction_are_floored_and_never_zero():
    assert Budget.parse(0.1).entries(1005, n_layers=2, n_heads=3, bytes_per_entry=8) == 100 * 6
    assert Budget.parse(0.29).entries(100, n_layers=1, n_heads=1, bytes_per_entry=8) == 29
    assert Budget.parse(0.01).entries(10, n_layers=2, n_heads=3, bytes_per_entry=8) == 6
    assert Budget.parse(0.5).entries(0, n_layers=2, n_heads=3, bytes_per_entry=8) == 6


def test_entries_of_a_byte_budget_divide_by_the_entry_size():
    assert Budget.parse("1MiB").entries(10, n_layers=2, n_heads=2, bytes_per_entry=256) == 4096
    assert Budget.parse("1000B").entries(10, n_layers=2, n_heads=2, bytes_per_entry=300) == 3
    with pytest.raises(ValueError):
        Budget.parse("1MiB").entries(10, n_layers=2, n_heads=2, bytes_per_entry=0)


@pytest.mark.parametrize(
    ("given_value", "text"),
    [
        (1024, "1024 tokens"),
        (0.1, "0.1 of the prompt (10%)"),
        ("512MiB", "512 MiB"),
        ("1.5GiB", "1.5 GiB"),
        ("100B", "100 B"),
    ],
)
def test_str_is_readable(given_value, text):
    assert str(Budget.parse(given_value)) == text


@given(st.integers(1, 10**9))
@FAST
def test_any_positive_int_is_a_token_budget(n):
    assert Budget.parse(n).entries(0, 3, 2, 1) == n * 6


@given(st.floats(1e-6, 1.0), st.integers(0, 10**6))
@FAST
def test_a_fraction_budget_never_exceeds_the_tokens_seen(fraction, seen):
    per_position = 2 * 3
    entries = Budget.parse(fraction).entries(seen, 2, 3, 1)
    assert entries % per_position == 0
    assert per_position <= entries <= max(seen, 1) * per_position


# ---------------------------------------------------------------------------------------------
# allocate: worked examples


def _grid(n_layers: int, n_heads: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (layer, head) indices of a dense [layer, head, position] cache."""
    layer = torch.arange(n_layers).repeat_interleave(n_heads * length)
    head = torch.arange(n_heads).repeat_interleave(length).repeat(n_layers)
    return layer, head


def test_global_keeps_the_top_scores_wherever_they_are():
    scores = torch.tensor([0.9, 0.1, 0.8, 0.7, 0.2, 0.3])
    layer, head = _grid(2, 1, 3)
    keep = allocate(scores, layer, head, 3, n_layers=2, n_heads=1)
    assert keep.tolist() == [True, False, True, True, False, False]


def test_layer_mode_gives_each_layer_its_share_remainder_to_the_lowest_layers():
    scores = torch.tensor([9.0, 8, 7, 6, 1, 2, 3, 4, 0.5, 0.4, 0.3, 0.2])
    layer, head = _grid(3, 1, 4)
    keep = allocate(scores, layer, head, 5, mode="layer", n_layers=3, n_heads=1)
    assert keep.view(3, 4).sum(1).tolist() == [2, 2, 1]
    assert keep.view(3, 4).tolist() == [
        [True, True, False, False],
        [False, False, True, True],
        [True, False, False, False],
    ]


def test_uniform_mode_gives_each_head_its_share_remainder_in_row_major_order():
    layer, head = _grid(2, 2, 4)
    scores = torch.arange(16, dtype=torch.float32)
    keep = allocate(scores, layer, head, 7, mode="uniform", n_layers=2, n_heads=2)
    assert keep.view(4, 4).sum(1).tolist() == [2, 2, 2, 1]
    assert keep.view(4, 4)[:, -1].all()  # each head keeps its best score


def test_unused_share_is_not_given_to_other_groups():
    scores = torch.tensor([1.0, -INF, -INF, 5.0, 4.0, 3.0])
    layer, head = _grid(2, 1, 3)
    keep = allocate(scores, layer, head, 4 - 1, mode="layer", n_layers=2, n_heads=1)
    # Layer 0 has one candidate for its share of 2; layer 1 still keeps only its share of 1.
    assert keep.tolist() == [True, False, False, True, False, False]


def test_protected_entries_are_kept_and_paid_for_from_the_budget():
    scores = torch.tensor([0.0, 5.0, 4.0, 3.0, 0.0])
    protected = torch.tensor([True, False, False, False, True])
    layer, head = _grid(1, 1, 5)
    keep = allocate(scores, layer, head, 3, n_layers=1, n_heads=1, protected=protected)
    assert keep.tolist() == [True, True, False, False, True]


def test_empty_slots_are_never_kept_even_when_everything_fits():
    scores = torch.tensor([1.0, -INF, 2.0, -INF])
    layer, head = _grid(1, 1, 4)
    protected = torch.tensor([False, True, False, False])
    keep = allocate(scores, layer, head, 100, n_layers=1, n_heads=1, protected=protected)
    assert keep.tolist() == [True, False, True, False]


def test_everything_fits_so_nothing_is_evicted_in_any_mode():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, -INF])
    layer = torch.tensor([0, 0, 0, 0, 1, 1])
    head = torch.zeros(6, dtype=torch.long)
    for mode in ALLOCATIONS:
        keep = allocate(scores, layer, head, 5, mode=mode, n_layers=2, n_heads=1)
        assert keep.tolist() == [True] * 5 + [False]


def test_modality_cap_lets_the_next_best_other_modality_in():
    scores = torch.tensor([9.0, 8.0, 7.0, 1.0, 0.5])
    modality = torch.tensor([1, 1, 1, 0, 0], dtype=torch.int8)
    layer, head = _grid(1, 1, 5)
    keep = allocate(
        scores, layer, head, 3, n_layers=1, n_heads=1, modality=modality, modality_caps={1: 1}
    )
    assert keep.tolist() == [True, False, False, True, True]


def test_protected_entries_count_toward_a_cap_but_are_never_capped():
    scores = torch.tensor([0.0, 0.0, 9.0, 8.0, 1.0])
    modality = torch.tensor([1, 1, 1, 1, 0], dtype=torch.int8)
    protected = torch.tensor([True, True, False, False, False])
    layer, head = _grid(1, 1, 5)
    keep = allocate(
        scores,
        layer,
        head,
        4,
        n_layers=1,
        n_heads=1,
        protected=protected,
        modality=modality,
        modality_caps={1: 1},
    )
    assert keep.tolist() == [True, True, False, False, True]


def test_caps_are_shared_by_all_layers_and_fill_in_score_order():
    # Best first: two images and a video in layer 0, then two videos and a text in layer 1.
    scores = torch.tensor([10.0, 9.0, 8.0, 4.0, 7.0, 6.0, 5.0])
    layer = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    modality = torch.tensor([1, 1, 2, 0, 2, 2, 0], dtype=torch.int8)
    keep = allocate(
        scores,
        layer,
        torch.zeros(7, dtype=torch.long),
        4,
        mode="layer",
        n_layers=2,
        n_heads=1,
        modality=modality,
        modality_caps={1: 1, 2: 1},
    )
    # The image cap lets layer 0's video in ahead of layer 1's videos, which then find the
    # video cap full.
    assert keep.tolist() == [True, False, True, False, False, False, True]


def test_rank_normalize_puts_heads_on_one_scale():
    # Head 0 scores are tiny, head 1 scores huge: raw global ranking would keep only head 1.
    scores = torch.tensor([0.003, 0.002, 0.001, 300.0, 200.0, 100.0])
    layer, head = torch.zeros(6, dtype=torch.long), torch.tensor([0, 0, 0, 1, 1, 1])
    raw = allocate(scores, layer, head, 2, n_layers=1, n_heads=2)
    assert raw.tolist() == [False, False, False, True, True, False]
    ranked = allocate(scores, layer, head, 2, n_layers=1, n_heads=2, rank_normalize=True)
    assert ranked.tolist() == [True, False, False, True, False, False]


def test_too_many_protected_entries_is_an_error_with_both_numbers():
    layer, head = _grid(1, 1, 128)
    protected = torch.ones(128, dtype=torch.bool)
    protected[-1] = False
    with pytest.raises(ValueError, match=r"budget of 96 entries .* the 127 protected entries"):
        allocate(torch.rand(128), layer, head, 96, n_layers=1, n_heads=1, protected=protected)


def test_too_many_protected_entries_in_one_layer_names_the_layer():
    layer, head = _grid(2, 1, 8)
    protected = torch.zeros(16, dtype=torch.bool)
    protected[8:13] = True
    with pytest.raises(ValueError, match=r"layer 1's budget of 4 entries .* 5 protected"):
        allocate(
            torch.rand(16),
            layer,
            head,
            8,
            mode="layer",
            n_layers=2,
            n_heads=1,
            protected=protected,
        )


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"mode": "random"}, "allocation mode"),
        ({"capacity": -1}, "capacity"),
        ({"scores": torch.tensor([1.0, math.nan, 0.0, 0.0])}, "NaN"),
        ({"layer": torch.tensor([0, 0, 2, 0])}, "layer indices"),
        ({"head": torch.tensor([0, -1, 0, 0])}, "head indices"),
        ({"modality_caps": {1: 1}}, "modality"),
        ({"protected": torch.ones(3, dtype=torch.bool)}, "shape"),
    ],
)
def test_bad_arguments_are_refused(kwargs, pattern):
    args = {
        "scores": torch.rand(4),
        "layer": torch.tensor([0, 0, 1, 1]),
        "head": torch.zeros(4, dtype=torch.long),
        "capacity": 2,
        "n_layers": 2,
        "n_heads": 1,
    } | kwargs
    with pytest.raises(ValueError, match=pattern):
        allocate(**args)


def test_a_million_entries_are_ranked_in_one_pass():
    n_layers, n_heads, length = 16, 4, 4096
    layer, head = _grid(n_layers, n_heads, length)
    scores = torch.rand(layer.numel(), generator=torch.Generator().manual_seed(0))
    for mode in ALLOCATIONS:
        keep = allocate(scores, layer, head, 65536, mode=mode, n_layers=n_layers, n_heads=n_heads)
        assert int(keep.sum()) == 65536


# ---------------------------------------------------------------------------------------------
# allocate: properties over random caches


@st.composite
def caches(draw):
    n_layers = draw(st.integers(1, 4))
    n_heads = draw(st.integers(1, 3))
    n = draw(st.integers(0, 48))
    entry = st.integers(0, n_layers * n_heads - 1)
    groups = draw(st.lists(entry, min_size=n, max_size=n))
    # Few distinct values so that ties are common.
    value = st.sampled_from([-INF, 0.0, 0.5, 1.0, 1.0, 2.0, 3.0, -1.0])
    scores = draw(st.lists(value, min_size=n, max_size=n))
    # Mostly unprotected, so that most caches fit their budget.
    pin = st.sampled_from([False, False, True])
    protected = draw(st.none() | st.lists(pin, min_size=n, max_size=n))
    modality = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    caps = draw(st.none() | st.dictionaries(st.integers(0, 3), st.integers(0, 12), max_size=3))
    return {
        "scores": torch.tensor(scores, dtype=torch.float32).reshape(n),
        "layer": torch.tensor(groups, dtype=torch.long).reshape(n) // n_heads,
        "head": torch.tensor(groups, dtype=torch.long).reshape(n) % n_heads,
        "capacity": draw(st.integers(0, n + 4)),
        "mode": draw(st.sampled_from(ALLOCATIONS)),
        "n_layers": n_layers,
        "n_heads": n_heads,
        "protected": None if protected is None else torch.tensor(protected, dtype=torch.bool),
        "modality": torch.tensor(modality, dtype=torch.int8).reshape(n),
        "modality_caps": caps,
        "rank_normalize": draw(st.booleans()),
    }


def _effective_scores(c) -> list[float]:
    """The scores ``allocate`` ranks by, recomputed the slow way from the documentation."""
    scores = c["scores"].tolist()
    if not c["rank_normalize"]:
        return scores
    heads = [
        lay * c["n_heads"] + h
        for lay, h in zip(c["layer"].tolist(), c["head"].tolist(), strict=True)
    ]
    out = list(scores)
    for g in set(heads):
        members = [i for i in range(len(scores)) if heads[i] == g and scores[i] != -INF]
        members.sort(key=lambda i: (-scores[i], i))
        for rank, i in enumerate(members):
            out[i] = (len(members) - rank) / len(members)
    return out


def _groups(c) -> list[int]:
    layer, head = c["layer"].tolist(), c["head"].tolist()
    if c["mode"] == "global":
        return [0] * len(layer)
    if c["mode"] == "layer":
        return layer
    return [lay * c["n_heads"] + h for lay, h in zip(layer, head, strict=True)]


def _shares(c) -> list[int]:
    n_groups = {"global": 1, "layer": c["n_layers"], "uniform": c["n_layers"] * c["n_heads"]}
    n_groups = n_groups[c["mode"]]
    base, extra = divmod(c["capacity"], n_groups)
    return [base + (g < extra) for g in range(n_groups)]


def _reference(c) -> list[bool] | None:
    """The documented rule, entry by entry; None where ``allocate`` must refuse."""
    scores = c["scores"].tolist()
    n = len(scores)
    present = [s != -INF for s in scores]
    protected = c["protected"].tolist() if c["protected"] is not None else [False] * n
    protected = [p and q for p, q in zip(protected, present, strict=True)]
    modality = c["modality"].tolist()
    caps = c["modality_caps"] or {}
    room = {
        m: cap - sum(p and modality[i] == m for i, p in enumerate(protected))
        for m, cap in caps.items()
    }
    uncapped_fit = all(
        sum(present[i] and not protected[i] and modality[i] == m for i in range(n)) <= max(r, 0)
        for m, r in room.items()
    )
    if c["capacity"] >= sum(present) and uncapped_fit:
        return present
    groups, shares = _groups(c), _shares(c)
    left = list(shares)
    for i in range(n):
        left[groups[i]] -= protected[i]
    if min(left) < 0:
        return None
    effective = _effective_scores(c)
    keep = list(protected)
    for i in sorted(range(n), key=lambda i: (-effective[i], i)):
        if not present[i] or protected[i] or left[groups[i]] == 0:
            continue
        if modality[i] in room:
            if room[modality[i]] <= 0:
                continue
            room[modality[i]] -= 1
        left[groups[i]] -= 1
        keep[i] = True
    return keep


@given(caches())
@FAST
def test_allocate_follows_the_documented_rule(c):
    expected = _reference(c)
    if expected is None:
        with pytest.raises(ValueError, match="protected entries"):
            allocate(**c)
    else:
        assert allocate(**c).tolist() == expected


@given(caches())
@FAST
def test_allocate_properties(c):
    try:
        keep = allocate(**c).tolist()
    except ValueError as error:
        assert "protected entries" in str(error)
        return
    assert allocate(**c).tolist() == keep  # deterministic
    scores = c["scores"].tolist()
    n = len(scores)
    present = [s != -INF for s in scores]
    protected = c["protected"].tolist() if c["protected"] is not None else [False] * n
    modality = c["modality"].tolist()
    caps = c["modality_caps"] or {}

    # Empty slots never stay; protected entries never go.
    assert not any(k and not p for k, p in zip(keep, present, strict=True))
    assert all(keep[i] for i in range(n) if protected[i] and present[i])

    # Caps hold, except that protected entries are never dropped to meet one.
    kept_of = {m: sum(k and modality[i] == m for i, k in enumerate(keep)) for m in caps}
    for m, cap in caps.items():
        pinned = sum(protected[i] and present[i] and modality[i] == m for i in range(n))
        assert kept_of[m] <= max(cap, pinned)

    if c["capacity"] >= sum(present):
        return  # everything that could be kept fitted
    # The budget is never exceeded, overall and per competing group.
    groups, shares = _groups(c), _shares(c)
    assert sum(keep) <= c["capacity"]
    for g, share in enumerate(shares):
        assert sum(k for i, k in enumerate(keep) if groups[i] == g) <= share

    # Inside each group what stays is the top of the ranking: a better candidate was only
    # passed over because its modality had already reached its cap.
    effective = _effective_scores(c)
    full = {m for m in caps if kept_of[m] >= caps[m]}
    for e in range(n):
        if keep[e] or not present[e]:
            continue
        for k in range(n):
            if keep[k] and not protected[k] and groups[k] == groups[e]:
                beats = (-effective[e], e) < (-effective[k], k)
                assert not beats or modality[e] in full
        # A group with share left evicts only entries whose modality is full.
        kept_here = sum(keep[i] for i in range(n) if groups[i] == groups[e])
        assert kept_here == shares[groups[e]] or modality[e] in full


@given(caches())
@FAST
def test_budget_is_spent_exactly_when_candidates_suffice(c):
    c["modality_caps"] = None
    try:
        keep = allocate(**c)
    except ValueError:
        return
    present = c["scores"] != -INF
    groups = torch.tensor(_groups(c), dtype=torch.long)
    for g, share in enumerate(_shares(c)):
        in_group = groups == g
        expected = min(share, int((present & in_group).sum()))
        if c["capacity"] >= int(present.sum()):
            expected = int((present & in_group).sum())
        assert int((keep & in_group).sum()) == expected


def test_a_head_floor_keeps_every_head_its_own_best_entries():
    # Two layers of two heads, ten entries each; the first head outscores every other entry.
    layer = torch.arange(2).repeat_interleave(20)
    head = torch.arange(2).repeat_interleave(10).repeat(2)
    scores = torch.rand(40, generator=torch.Generator().manual_seed(0))
    scores[:10] += 10
    plain = allocate(scores, layer, head, 16, n_layers=2, n_heads=2)
    assert int(plain[:10].sum()) == 10  # without a floor the strong head takes all it has
    assert torch.equal(
        allocate(scores, layer, head, 16, n_layers=2, n_heads=2, head_floor=0.0), plain
    )

    floored = allocate(scores, layer, head, 16, n_layers=2, n_heads=2, head_floor=0.5)
    assert int(floored.sum()) == 16
    for g in range(4):  # 0.5 × 16 = 8 entries of floor: each head keeps its 2 best at least
        own = scores[g * 10 : (g + 1) * 10]
        best = own.topk(2).indices + g * 10
        assert bool(floored[best].all())
    # The other 8 go by one ranking: the strong head's 8 next best.
    assert int(floored[:10].sum()) == 10


def test_a_head_floor_is_paid_from_what_the_protections_leave():
    layer = torch.zeros(12, dtype=torch.long)
    head = torch.arange(2).repeat_interleave(6)
    scores = torch.arange(12, dtype=torch.float)  # head 1 outscores head 0 everywhere
    protected = torch.zeros(12, dtype=torch.bool)
    protected[[0, 6]] = True
    keep = allocate(
        scores, layer, head, 6, n_layers=1, n_heads=2, protected=protected, head_floor=0.5
    )
    # 6 - 2 protected = 4; half of it, 2, split over the two heads: head 0 keeps its best
    # entry (5) besides the protected one; the other 2 go by one ranking, to head 1 (9, 10).
    assert keep.nonzero().squeeze(1).tolist() == [0, 5, 6, 9, 10, 11]
