"""Graphs that once crashed planning, written once for both Keras generations (``K`` is
tf-keras or Keras 3): a variable-length text model over integer token ids (``Input((None,),
dtype="int32")`` → ``Embedding`` → ``LSTM`` → ``Dense``), and a model holding an unknown
composite layer (a custom layer with sublayers, no rule, a config that cannot rebuild it).
:func:`run` plans at ratio 0.5, applies and verifies each (the composite one's ``apply`` must
refuse it, naming the layer: a copy would share it with the input model);
tests/test_robust_graphs.py runs them on tf-keras, tests/keras3_transformer_cases.py on
Keras 3.
"""
import numpy as np


def token_lstm(K):
    L = K.layers
    x = K.Input((None,), dtype="int32")
    h = L.Embedding(50, 16, name="emb")(x)
    h = L.LSTM(12, name="lstm")(h)
    h = L.Dense(10, activation="relu", name="dense")(h)
    model = K.Model(x, L.Dense(3, name="out")(h))
    return model, np.random.default_rng(0).integers(0, 50, (4, 7)).astype("int32")


def composite(K):
    L = K.layers

    class Block(L.Layer):
        """Holds two Dense sublayers; its config lacks ``width``, so it cannot be
        rebuilt from it."""

        def __init__(self, width, **kwargs):
            super().__init__(**kwargs)
            self.inner = L.Dense(width, activation="relu")
            self.outer = L.Dense(width)

        def call(self, x):
            return x + self.outer(self.inner(x))

        def get_config(self):
            return {"name": "renamed"}

    x = K.Input((10, 8))
    h = L.Dense(8, name="pre")(x)
    h = Block(8, name="block")(h)
    h = L.Dense(12, activation="relu", name="mid")(h)
    h = L.GlobalAveragePooling1D()(h)
    model = K.Model(x, L.Dense(3, name="out")(h))
    return model, np.random.default_rng(0).normal(size=(4, 10, 8)).astype(K.backend.floatx())


def run(K, surgery, name):
    from surgery.engine.zeroing import max_relative_difference

    model, x = {"token_lstm": token_lstm, "composite": composite}[name](K)
    rng = np.random.default_rng(1)
    model.set_weights([w + rng.normal(0, 0.2, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    plan = surgery.plan(model, ratio=0.5)
    if name == "composite":
        before = model.get_weights()
        try:
            surgery.apply(model, plan)
            refused = None
        except surgery.SurgeryError as error:
            refused = str(error)
        return dict(refused=refused, deletions=sorted(plan.deletions), skipped=plan.skipped,
                    unchanged=all(np.array_equal(a, b)
                                  for a, b in zip(before, model.get_weights())))
    pruned = surgery.apply(model, plan)
    zeroed = surgery.zero_channels(model, plan.deletions)
    return dict(verify=surgery.verify(model, pruned, plan, x),
                moved=max_relative_difference(model(x), zeroed(x)),
                deletions=sorted(plan.deletions), skipped=plan.skipped,
                params=[int(model.count_params()), int(pruned.count_params())])
