#!/usr/bin/env python
"""Checkout shim (not installed): the CLI lives in ``surgery/cli/train.py``, installed as
``keras-surgery train``. ``python train.py ...`` runs it; ``import train`` gives that module."""
import importlib.util
import os
import sys

if __name__ == "__main__":
    _spec = importlib.util.spec_from_file_location(  # imports no TensorFlow
        "_surgery_startup", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         "surgery", "_startup.py"))
    _startup = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_startup)
    # oneDNN guard, then Keras 3 (a Keras 3 --restore file, or --keras 3) or TensorFlow
    # with the Keras 2 API imported first, with stderr muted
    _startup.cli_startup(_startup.keras_generation(sys.argv[1:]))
    from surgery.cli.train import main

    sys.exit(main())
else:
    from surgery.cli import train as _impl

    sys.modules[__name__] = _impl
