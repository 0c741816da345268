"""The engine: what the plugin knows about layers and graphs, and channel surgery itself.

``rules`` describes each layer family once (how channels flow through it, how it is cut,
zeroed, counted and scored); ``keras2`` is the only module that touches tf-keras graph
internals (``keras3`` those of Keras 3), and ``graph`` holds a model with its adapter,
resolved once per public call; on top of those sit ``groups`` (coupled channel axes), ``surgeon`` (one
kerassurgeon pass), ``zeroing`` (the equivalence oracle), ``flops`` and ``flatten``
(nested models inlined).
"""
