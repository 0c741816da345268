"""The engine: what the plugin knows about layers and graphs, and channel surgery itself.

``rules`` describes each layer family once (how channels flow through it, how it is cut,
zeroed, counted and scored); ``keras2`` is the only module that touches tf-keras graph
internals; on top of those two sit ``groups`` (coupled channel axes), ``surgeon`` (one
kerassurgeon pass), ``zeroing`` (the equivalence oracle), ``flops`` and ``flatten``
(nested models inlined).
"""
