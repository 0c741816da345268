"""Packaging for the Keras model-surgery plugin.

Installs the ``surgery`` package only (the checkout's ``train.py``, ``prune_and_finetune.py``,
``data_generator.py``, ``quiet_tf.py``, ``models/`` and ``patches/`` are shims for working
from a checkout and are not installed) and the ``keras-surgery`` console script.

Install with the README's command: the pinned requirements first, then kerassurgeon 0.2.0
without its broken metadata, then this package with --no-deps. ``install_requires`` gives
ranges that include the pins of requirements.txt, so the plugin fits existing environments.
"""
from setuptools import find_packages, setup

setup(
    name="keras-surgery",
    version="0.1.0",
    description="Structured channel pruning for Keras models on top of kerassurgeon and tfmot",
    python_requires=">=3.11,<3.14",
    packages=find_packages(include=["surgery", "surgery.*"]),
    # kerassurgeon==0.2.0 is required too but must be installed with --no-deps
    # (see requirements.txt); listing it here would make pip resolve its bogus pins.
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        "tensorflow-model-optimization>=0.8.1,<0.9",
        "numpy>=1.26,<3",
        "h5py>=3.11,<4",
        "importlib-metadata>=6",
        # Keras 3 models (surgery.engine.keras3); 3.15 is the tested release, and Keras 3
        # fine-tuning distils with its keras.distillation.
        "keras>=3.15,<4",
    ],
    # Keras 3's other backends (KERAS_BACKEND=jax|torch), at the tested releases; CPU builds
    # are enough (the README says how to get PyTorch's CPU-only build). The library itself
    # never needs torch. ONNX export (surgery.export_onnx): tf2onnx converts, ONNX Runtime
    # runs and verifies. tests/test_packaging.py checks that every range admits the pin of
    # requirements.txt.
    extras_require={"jax": ["jax>=0.10,<0.11", "jaxlib>=0.10,<0.11"],
                    "torch": ["torch>=2.13,<2.14"],
                    "onnx": ["onnx>=1.23,<2", "onnxruntime>=1.32,<2", "tf2onnx>=1.17,<2"],
                    # language models (surgery.load_text, keras-hub causal LMs)
                    "lm": ["keras-hub>=0.32,<0.33", "sentencepiece>=0.2,<0.3",
                           "tqdm>=4.66,<5"]},
    entry_points={"console_scripts": ["keras-surgery=surgery.cli.main:main"]},
)
