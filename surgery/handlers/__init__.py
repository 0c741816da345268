"""Built-in layer handlers, one module per layer family; importing this package
registers them all (see :mod:`surgery.registry` for the handler contract)."""
from surgery.handlers import (  # noqa: F401
    activations, conv, depthwise, merge, preprocessing, reshaping, separable, tfop,
    transpose,
)
from surgery.registry import channel_vector, mask_for_shape, output_shape, rebuilt  # noqa: F401
