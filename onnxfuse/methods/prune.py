"""Plain pruning: each group keeps its chosen channels, a row-selection map through the one apply path.
TPP (Wang & Fu, ICLR 2023) removes the same way, after its `tpp` pass has trained the channels it
drops to exactly zero (onnxfuse/training/tpp.py), so that the removal changes nothing; sdprun after
its `sdprun` pass drove whole channels to zero (onnxfuse/training/sdprun.py)."""

from __future__ import annotations

from .channelmap import GroupMap
from .registry import register_method


@register_method("prune")
def selection_map(group, tensors, kept, scores, options, activations=None) -> GroupMap:
    return GroupMap.selection(group.width, kept)


register_method("tpp", extra_passes=(("tpp", "plan"),), needs_train_data=True)(selection_map)
register_method("sdprun", extra_passes=(("sdprun", "plan"),), needs_train_data=True)(selection_map)
