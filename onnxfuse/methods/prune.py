"""Plain pruning: each group keeps its chosen channels, a row-selection map through the one apply path."""

from __future__ import annotations

from .channelmap import GroupMap
from .registry import register_method


@register_method("prune")
def selection_map(group, tensors, kept, scores, options, activations=None) -> GroupMap:
    return GroupMap.selection(group.width, kept)
