"""Rewrites of a converted ONNX graph, made before :func:`surgery.export_onnx` publishes it.

This module owns what the converters leave that ONNX Runtime cannot run, or runs slowly:

* :func:`without_erfc`: TensorFlow's exact GELU (keras-hub's ViT and BERT blocks) converts to
  an ``Erfc`` node, which tf2onnx 1.17 passes through and no ONNX opset defines, so ONNX
  Runtime refuses the whole model ("No Op registered for Erfc"); it becomes ``1 - Erf``.
* :func:`fused_layer_norms`: Keras 3's ``LayerNormalization`` on TensorFlow converts to
  twelve or thirteen element-wise nodes (two ``GlobalAveragePool`` means, ``Sub``,
  ``Mul``, ``Add``, ``Sqrt``, ``Reciprocal``, ``Neg``, ...), which ONNX Runtime's own
  fusion does not recognise; each such chain becomes one ``LayerNormalization`` node
  (opset 17): a small ViT then took 0.905 of its time in ONNX Runtime (batch 32, 2
  threads; bench/results/vit_latency_floor.txt).

Each function rewrites an ``onnx.ModelProto`` in place and returns how many nodes it
replaced.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

#: the opset that defines ``LayerNormalization``
LAYER_NORM_OPSET = 17


def without_erfc(proto) -> int:
    """Rewrite every ``Erfc`` node of ``proto`` as ``1 - Erf``."""
    from onnx import helper, numpy_helper  # lazy, with the rest of the ONNX extra

    nodes, changed = [], 0
    for node in proto.graph.node:
        if node.op_type != "Erfc" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        erf, one = f"{node.name}/erf", f"{node.name}/one"
        proto.graph.initializer.append(numpy_helper.from_array(np.ones((), np.float32), one))
        nodes += [helper.make_node("Erf", list(node.input), [erf], name=erf),
                  helper.make_node("Sub", [one, erf], list(node.output), name=node.name)]
        changed += 1
    if changed:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    return changed


class _Graph:
    """Who makes and who reads each tensor of a graph, its constants, and its ranks."""

    def __init__(self, proto):
        from onnx import numpy_helper, shape_inference  # lazy, with the rest of the extra

        self.proto = proto
        self.made = {o: n for n in proto.graph.node for o in n.output}
        self.readers: dict = {}
        for n in proto.graph.node:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)
        for o in proto.graph.output:
            self.readers.setdefault(o.name, []).append(None)  # a graph output is read
        self.constants = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        inferred = shape_inference.infer_shapes(proto).graph
        self.ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
                      list(inferred.value_info) + list(inferred.input) + list(inferred.output)
                      if v.type.tensor_type.HasField("shape")}

    def node(self, tensor: str, op: str):
        """The node of type ``op`` that makes ``tensor``, or ``None``."""
        n = self.made.get(tensor)
        return n if n is not None and n.op_type == op and n.domain in ("", "ai.onnx") else None

    def only_read_by(self, tensor: str, nodes: list) -> bool:
        ids = {id(n) for n in nodes}
        return all(r is not None and id(r) in ids for r in self.readers.get(tensor, []))

    def constant_pair(self, node) -> Optional[tuple]:
        """``(other input, constant)`` of a two-input node with one constant input."""
        if len(node.input) != 2:
            return None
        a, b = node.input
        if b in self.constants and a not in self.constants:
            return a, self.constants[b]
        if a in self.constants and b not in self.constants:
            return b, self.constants[a]
        return None


def _match_layer_norm(g: _Graph, out) -> Optional[tuple]:
    """``(nodes, x, gamma, beta, epsilon)`` when ``out`` (an ``Add``) ends Keras 3's
    LayerNormalization over the last axis of a rank-3 tensor ``x``:
    ``x * m + (-mean(x) * m [+ beta])`` with ``m = gamma / sqrt(var(x) + epsilon)``."""
    if out.op_type != "Add" or len(out.input) != 2:
        return None
    for scaled_name, shift_name in (out.input, out.input[::-1]):
        scaled, shift = g.node(scaled_name, "Mul"), g.made.get(shift_name)
        if scaled is None or shift is None:
            continue
        beta, shifted = None, shift
        if shift.op_type == "Add" and g.constant_pair(shift):
            shifted_name, beta = g.constant_pair(shift)
            shifted = g.node(shifted_name, "Mul")
        if shifted is None or shifted.op_type != "Mul":
            continue
        found = _centred_scaled(g, scaled, shifted)
        if found is None:
            continue
        inner, x, gamma, eps = found
        width = int(np.size(gamma)) if gamma is not None else None
        nodes = [out, scaled, shifted] + inner + ([shift] if beta is not None else [])
        if width is not None and beta is not None and np.size(beta) != width:
            continue
        ends = [(scaled, out), (shifted, shift if beta is not None else out)] + \
            ([(shift, out)] if beta is not None else [])
        if not all(g.only_read_by(n.output[0], [reader]) for n, reader in ends):
            continue  # a partial result read elsewhere too: the chain must stay
        return nodes, x, gamma, beta, eps
    return None


def _centred_scaled(g: _Graph, scaled, shifted) -> Optional[tuple]:
    """``(inner nodes, x, gamma, epsilon)`` when ``scaled = x * m`` and ``shifted =
    -mean(x) * m``, ``m`` as in :func:`_match_layer_norm`."""
    for x, m in (scaled.input, scaled.input[::-1]):
        if m not in shifted.input:
            continue
        others = [i for i in shifted.input if i != m]
        neg = g.node(others[0], "Neg") if len(others) == 1 else None
        mean = g.node(neg.input[0], "GlobalAveragePool") if neg is not None else None
        if mean is None or mean.input[0] != x or g.ranks.get(x) != 3:
            continue
        scale = g.made.get(m)
        gamma, recip = None, scale
        if scale is not None and scale.op_type == "Mul" and g.constant_pair(scale):
            recip_name, gamma = g.constant_pair(scale)
            recip = g.node(recip_name, "Reciprocal")
        sqrt = g.node(recip.input[0], "Sqrt") if recip is not None and \
            recip.op_type == "Reciprocal" else None
        add = g.node(sqrt.input[0], "Add") if sqrt is not None else None
        pair = g.constant_pair(add) if add is not None else None
        var = g.node(pair[0], "GlobalAveragePool") if pair else None
        square = g.node(var.input[0], "Mul") if var is not None else None
        sub = g.node(square.input[0], "Sub") if square is not None and \
            square.input[0] == square.input[1] else None
        if sub is None or list(sub.input) != [x, mean.output[0]] or np.size(pair[1]) != 1:
            continue
        inner = [neg, mean, recip, sqrt, add, var, square, sub] + \
            ([scale] if scale is not recip else [])
        readers = [scaled, shifted] + inner
        if not all(g.only_read_by(o, readers) for n in inner for o in n.output):
            continue
        return inner, x, gamma, float(np.asarray(pair[1]).reshape(()))
    return None


def fused_layer_norms(proto) -> int:
    """Replace each chain of :func:`_match_layer_norm` in ``proto`` by one
    ``LayerNormalization`` node (``axis=-1``), raising the model's opset to 17 where it is
    lower. ``proto``'s outputs do not change beyond float rounding (a few 1e-7)."""
    from onnx import helper, numpy_helper  # lazy, with the rest of the ONNX extra

    opset = max((e.version for e in proto.opset_import if e.domain in ("", "ai.onnx")),
                default=0)
    if opset < 16 and any(n.op_type == "RoiAlign" for n in proto.graph.node):
        return 0  # opset 16 changed RoiAlign's default: raising the opset would change it
    g = _Graph(proto)
    replaced, gone = {}, set()
    for node in proto.graph.node:
        found = _match_layer_norm(g, node) if id(node) not in gone else None
        if found is None or any(id(n) in gone for n in found[0]):
            continue
        nodes, x, gamma, beta, eps = found
        width = int(np.size(gamma if gamma is not None else beta)) \
            if gamma is not None or beta is not None else None
        if width is None:
            continue  # neither scale nor centre: the width is not in the graph
        names = [f"{node.name}/layer_norm/gamma", f"{node.name}/layer_norm/beta"]
        for name, value in zip(names, (gamma, beta)):
            value = np.ones(width, np.float32) if value is None and name.endswith("gamma") \
                else np.zeros(width, np.float32) if value is None else value
            proto.graph.initializer.append(numpy_helper.from_array(
                np.asarray(value, np.float32).reshape(width), name))
        replaced[id(node)] = helper.make_node(
            "LayerNormalization", [x] + names, list(node.output), axis=-1, epsilon=eps,
            name=f"{node.name}/layer_norm")
        gone.update(id(n) for n in nodes)
    if not replaced:
        return 0
    before = list(proto.graph.node)
    was_read = {i for n in before if id(n) in gone for i in n.input}
    kept = [replaced.get(id(n), n) for n in before
            if id(n) in replaced or id(n) not in gone]
    read = {i for n in kept for i in n.input} | {o.name for o in proto.graph.output}
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    for i in [i for i in proto.graph.initializer if i.name in was_read - read]:
        # the chains' gains and epsilons, now inside the new nodes
        proto.graph.initializer.remove(i)
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < LAYER_NORM_OPSET:
            entry.version = LAYER_NORM_OPSET
    return len(replaced)
