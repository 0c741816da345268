"""Per-layer micro-benchmarks: one layer call timed alone at given channel widths.

This module owns how a layer's latency at candidate widths is measured: :func:`signature`
names a micro-model (layer class, config without the layer's name, input shape, input and
output widths), so layers of identical shape and config share one measurement;
:func:`micro_layer` rebuilds the layer from its config at other widths (the layer's own
``from_config``, so both Keras generations and user layers work), and
:func:`unit_entry` a layer with fewer units of one axis or two (its rule's own
``cut_units``: a composite transformer block with fewer heads or a narrower MLP, an
attention layer with fewer and narrower heads); :func:`measure` builds
the missing micro-models as the branches of *one* Keras model per chunk, converts it once
(:meth:`Runtime.runners` with ``branches=True``), times every branch (median of a few runs
after a warm-up), with a tqdm bar, and stores the seconds in a :class:`TableCache`.
"""
from __future__ import annotations

import functools
import json
import logging
import statistics
import time
from typing import Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

from tqdm.auto import tqdm

from surgery.cost.cache import TableCache, digest
from surgery.cost.cpu import cpu_features
from surgery.engine.graph import ModelGraph
from surgery.engine.rules import CHANNELWISE, rule_for

logger = logging.getLogger(__name__)

#: timed runs of each micro-model (after one warm-up run)
DEFAULT_REPEATS = 5
#: micro-models converted together
CHUNK = 128

#: ``(signature, build)``: ``build(keras, index)`` makes the micro-model's ``(input, output)``
Entry = Tuple[str, Callable]


def _config(info, out_channels: int) -> dict:
    config = {k: v for k, v in dict(info.config).items() if k != "name"}
    for key in ("filters", "units"):
        if key in config:
            config[key] = int(out_channels)
    return config


def signature(info, in_channels: int, out_channels: int, followers: Sequence = ()) -> str:
    """What a micro-model's time depends on, as a stable string."""
    shape = list(info.input_shapes[0][:-1]) + [int(in_channels)]
    configs = [_config(info, out_channels)] + [
        [f.class_name, _config(f, out_channels)] for f in followers]
    return f"{info.class_name}:{shape}->{int(out_channels)}:" + \
        digest(json.loads(json.dumps(configs, default=str)))


def channel_entry(info, in_channels: int, out_channels: int, followers: Sequence = ()
                  ) -> Entry:
    """The micro-model of ``info``'s layer at other channel widths (with its cheap
    ``followers``)."""
    return (signature(info, in_channels, out_channels, followers),
            functools.partial(micro_layer, info, in_channels, out_channels,
                              followers=tuple(followers)))


def unit_entry(info, rule, kept: Mapping[str, int], new_layer: Callable) -> Entry:
    """The micro-model of ``info``'s layer keeping ``kept[axis]`` units of each unit axis
    named (the rule cuts the first ones: the time does not depend on which; a pair of
    axes for the terms of :attr:`LayerRule.interacting_axes`), at its own channel widths;
    ``new_layer(layer, config)`` is the graph adapter's rebuild of a layer, which knows
    keras-hub's registered equivalents. An axis inside one block of an encoder
    (``"<block>/heads"``) is timed in that block alone: in the whole encoder, the time a
    head saves is lost in the noise of the other blocks' time."""
    cuts: dict = {}
    for axis, k in kept.items():
        size, blocks = int(rule.unit_axes(info)[axis]), int(rule.unit_blocks(info, axis))
        per, gone = size // blocks, (size - k) // blocks  # as many from every block
        if gone > 0:
            cuts[axis] = [b * per + j for b in range(blocks) for j in range(gone)]
    # the layer whole is one micro-model, whichever axis's table it starts; an axis is
    # named without its block ("heads", not "block_2/heads"): identical blocks of an
    # encoder, timed alone, are one micro-model, measured once (and their tables agree)
    named = ",".join(f"{axis.rpartition('/')[2]}={int(kept[axis])}" for axis in cuts) \
        or "whole"
    others = _other_blocks(info, rule, next(iter(kept)))
    if others:
        cuts["blocks"] = others
    config = info.replaced(*rule.cut_units(info, cuts)).config if cuts else dict(info.config)
    shape = tuple(int(d) for d in info.input_shapes[0])
    sig = f"{info.class_name}:{list(shape)}:{named}:" + digest(json.loads(
        json.dumps({k: v for k, v in config.items() if k != "name"}, default=str)))

    def build(keras, index: int):
        x = keras.Input(shape, name=f"micro_in_{index}")
        layer = new_layer(info.layer, dict(config, name=f"micro_{index}_0"))
        return x, layer(*[x] * len(info.input_shapes))
    return sig, build


def _other_blocks(info, rule, axis: str) -> list:
    """The blocks of ``info``'s ``"blocks"`` axis that do not hold unit ``axis``."""
    count = int(rule.unit_axes(info).get("blocks", 0))
    mine = [b for b in range(count) if axis in rule.block_axes(info, b)]
    return [b for b in range(count) if b not in mine] if mine else []


def cheap_followers(graph: ModelGraph) -> dict:
    """``{layer name: [LayerInfo, ...]}``: the channel-wise calls without FLOPs of their
    own (BatchNormalization, activations) that follow each layer alone, in a chain; a
    runtime fuses them into the layer, so a micro-model times them with it."""
    nodes = graph.calls()
    users: dict = {}
    for n in nodes:
        for k in n.input_keys:
            users.setdefault(k, []).append(n)
    chains = {}
    for n in nodes:
        chain, current = [], n
        while len(current.output_keys) == 1 and len(users.get(current.output_keys[0], [])) == 1:
            nxt = users[current.output_keys[0]][0]
            rule = rule_for(nxt.info)
            if rule is None or rule.flow_of(nxt.info) != CHANNELWISE or rule.flops(nxt.info) \
                    or not measurable(nxt.info) or len(nxt.input_keys) != 1:
                break
            chain.append(nxt.info)
            current = nxt
        chains[n.info.name] = chain
    return chains


def measurable(info) -> bool:
    """Single-input layers (not bare operations) that the cost tables time."""
    return info.op is None and info.layer is not None and len(info.input_shapes) == 1 \
        and len(info.input_shapes[0]) >= 1 and None not in tuple(info.input_shapes[0])


def measurable_units(info) -> bool:
    """Layers whose unit tables the cost tables time: :func:`measurable` ones, and layers
    called on several inputs of one shape (self-attention: ``MultiHeadAttention(x, x)``),
    timed on one input given to each."""
    shapes = [tuple(s) for s in info.input_shapes]
    return info.op is None and info.layer is not None and bool(shapes) \
        and len(shapes[0]) >= 1 and None not in shapes[0] and len(set(shapes)) == 1


def micro_layer(info, in_channels: int, out_channels: int, keras, index: int = 0,
                followers: Sequence = ()):
    """``(input tensor, output tensor)`` of a fresh copy of ``info``'s layer at these
    widths, followed by fresh copies of its ``followers``."""
    shape = tuple(int(d) for d in info.input_shapes[0][:-1]) + (int(in_channels),)
    x = keras.Input(shape, name=f"micro_in_{index}")
    y = x
    for k, call in enumerate([info, *followers]):
        config = dict(call.config, **_config(call, out_channels), name=f"micro_{index}_{k}")
        y = type(call.layer).from_config(config)(y)
    return x, y


def measure(entries: Sequence[Entry], runtime, batch: int, threads: int, cache: TableCache,
            keras, repeats: int = DEFAULT_REPEATS, progress: bool = True) -> dict:
    """Seconds of every entry's micro-model (from ``cache`` where present, else timed in
    ``runtime`` and added to it). Returns ``{signature: seconds}``."""
    seconds, missing = {}, {}
    for sig, build in entries:
        if sig in seconds or sig in missing:
            continue
        value = cache.get(sig)
        if value is None:
            missing[sig] = build
        else:
            seconds[sig] = value
    if not missing:
        return seconds
    todo = list(missing.items())
    bar = tqdm(total=len(todo), desc=f"cost tables ({runtime.name}, batch {batch})",
               unit="layer", disable=not progress, leave=False)
    start = time.perf_counter()
    try:
        for first in range(0, len(todo), CHUNK):
            chunk = todo[first:first + CHUNK]
            ins, outs = [], []
            for k, (sig, build) in enumerate(chunk):
                x, y = build(keras, first + k)
                ins.append(x)
                outs.append(y)
            runners = runtime.runners(keras.Model(ins, outs), batch, threads, branches=True)
            for (sig, _), run in zip(chunk, runners):
                run()  # warm-up
                samples = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    run()
                    samples.append(time.perf_counter() - t0)
                seconds[sig] = statistics.median(samples)
                cache.put(sig, seconds[sig])
                bar.update(1)
            del runners
    finally:
        bar.close()
        cache.save()
    logger.info("measured %d micro-models in %s in %.1f s (%d from the cache)", len(todo),
                runtime.name, time.perf_counter() - start, cache.hits)
    return seconds


def widths(full: int, block: int, fractions: Iterable[float]) -> List[int]:
    """Grid widths: ``fractions`` of ``full`` in multiples of ``block`` (``full`` itself,
    however aligned), largest first.

    >>> widths(96, 8, (1.0, 0.55, 0.2))
    [96, 56, 16]
    >>> widths(6, 8, (1.0, 0.5))
    [6]
    """
    grid = {int(full)}
    for f in fractions:
        w = int(round(f * full / block)) * block
        if block <= w < full:
            grid.add(w)
    return sorted(grid, reverse=True)


def cpu_key(runtime, model, batch: int, threads: int, features: Optional[Sequence] = None
            ) -> dict:
    """The environment a table belongs to (see :class:`TableCache`)."""
    return dict(runtime=runtime.name, version=runtime.version(model),
                cpu=list(features or cpu_features()), threads=int(threads), batch=int(batch))
