"""The op-rule registry: for each op, how its node ties the channel spaces of its tensors together.

A rule is `rule(node, tensor, axis, g) -> list[Relation]` (analysis/relations.py): asked about one
axis of one of the node's tensors, it answers with the relations that axis has to the node's other
tensors. Weighted ops also give `seeds(node, g) -> [Space]`, the spaces their weights read and
write, where the analysis starts. Ops are keyed by type, prefixed with their domain outside the
ONNX domain (`com.microsoft.FusedConv`). An op without a rule freezes every space that reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from ...graph.layouts import layout_of
from ...graph.view import GraphView, is_onnx_domain, node_label
from ...registry import Registry
from ..relations import Freeze, Relation, Space

Rule = Callable[[gs.Node, gs.Tensor, int, GraphView], list[Relation]]
Seeds = Callable[[gs.Node, GraphView], list[Space]]


@dataclass(frozen=True)
class OpRule:
    relations: Rule
    seeds: Seeds | None = None  # weighted ops: the spaces the analysis starts from


OP_RULES: Registry[OpRule] = Registry("op rule")


def register_op_rule(*ops: str, seeds: Seeds | None = None, replace: bool = False):
    """Decorator: `rule` handles every op in `ops` (types, domain-prefixed outside ONNX's domain);
    `seeds` for ops with weights; `replace` to override a built-in rule."""
    def wrap(rule: Rule) -> Rule:
        for op in ops:
            OP_RULES.add(op, OpRule(rule, seeds), replace=replace)
        return rule
    return wrap


def op_key(node: gs.Node) -> str:
    """The registry's key: the op type, prefixed with its domain outside the ONNX domain."""
    return node.op if is_onnx_domain(node) else f"{node.domain}.{node.op}"


def weighted_seeds(node: gs.Node, g: GraphView) -> list[Space]:
    """The seeds of a weighted op from the weight-layout table: its data input's and its output's
    channel axes."""
    layout = layout_of(node)
    x, y = node.inputs[0], node.outputs[0]
    axes = layout.input_axis(g.rank(x)), layout.output_axis(g.rank(y))
    return [] if None in axes else [(x.name, axes[0]), (y.name, axes[1])]


def seed_spaces(node: gs.Node, g: GraphView) -> list[Space]:
    """The channel spaces a weighted op reads and writes, where the analysis starts."""
    rule = OP_RULES.find(op_key(node))
    return rule.seeds(node, g) if rule is not None and rule.seeds is not None else []


def relations_for(node: gs.Node, tensor: gs.Tensor, axis: int, g: GraphView) -> list[Relation]:
    rule = OP_RULES.find(op_key(node))
    if rule is None:
        return [Freeze((tensor.name, axis), f"unsupported op {op_key(node)} ({node_label(node)})")]
    return rule.relations(node, tensor, axis, g)
