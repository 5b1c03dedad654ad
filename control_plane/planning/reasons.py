"""Placement reasons summarised: nodes grouped by why they were not chosen.

A reason per node grows with the fleet (1,000 nodes: 999 reasons in every
deployment view), so views, dry runs, statuses and events carry counts by
reason with a few example nodes instead. Groups are ordered by size, then
reason; past `max_groups` the rest fold into one "other reasons" group, so a
summary stays small however varied the fleet. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

EXAMPLES = 2
MAX_GROUPS = 8
OTHER = "other reasons"


@dataclass(frozen=True)
class ReasonGroup:
    reason: str
    count: int
    examples: tuple[str, ...]


def summarise(not_chosen: Mapping[str, str], *, examples: int = EXAMPLES, max_groups: int = MAX_GROUPS) -> list[ReasonGroup]:
    """Nodes by reason, largest group first, each with its first node ids (sorted) as examples."""
    by_reason: dict[str, list[str]] = {}
    for node_id, reason in not_chosen.items():
        by_reason.setdefault(reason, []).append(node_id)
    ordered = sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0]))
    groups = [ReasonGroup(reason, len(nodes), tuple(sorted(nodes)[:examples])) for reason, nodes in ordered[:max_groups]]
    rest = [node for _, nodes in ordered[max_groups:] for node in nodes]
    if rest:
        groups.append(ReasonGroup(OTHER, len(rest), tuple(sorted(rest)[:examples])))
    return groups


def describe(groups: list[ReasonGroup]) -> str:
    """'998 nodes: no room (e.g. node-a, node-b); 1 node: node is cordoned (e.g. node-c)'."""
    parts = []
    for g in groups:
        noun = "node" if g.count == 1 else "nodes"
        example = f" (e.g. {', '.join(g.examples)})" if g.count > len(g.examples) else f" ({', '.join(g.examples)})"
        parts.append(f"{g.count} {noun}: {g.reason}{example}")
    return "; ".join(parts)


def describe_nodes(not_chosen: Mapping[str, str]) -> str:
    """describe(summarise(not_chosen))."""
    return describe(summarise(not_chosen))
