"""control_plane.planning.reasons: nodes counted by reason, with examples, bounded."""

from __future__ import annotations

from control_plane.planning import reasons


def test_groups_are_ordered_by_size_with_sorted_examples() -> None:
    not_chosen = {f"node-{i:03d}": "needs 4 cpus, 0 of 4 free" for i in range(998)}
    not_chosen["gpu-a"] = "pool 'gpu' does not match the node's pool 'default'"
    groups = reasons.summarise(not_chosen)
    assert [(g.reason, g.count, g.examples) for g in groups] == [
        ("needs 4 cpus, 0 of 4 free", 998, ("node-000", "node-001")),
        ("pool 'gpu' does not match the node's pool 'default'", 1, ("gpu-a",)),
    ]
    assert reasons.describe(groups) == (
        "998 nodes: needs 4 cpus, 0 of 4 free (e.g. node-000, node-001); "
        "1 node: pool 'gpu' does not match the node's pool 'default' (gpu-a)"
    )


def test_past_the_group_limit_the_rest_is_one_group() -> None:
    not_chosen = {f"n{i}": f"reason {i % 20}" for i in range(100)}
    groups = reasons.summarise(not_chosen, max_groups=3)
    assert len(groups) == 4 and groups[-1].reason == reasons.OTHER
    assert sum(g.count for g in groups) == 100 and groups[-1].count == 85


def test_nothing_to_summarise_is_empty() -> None:
    assert reasons.summarise({}) == [] and reasons.describe([]) == ""
