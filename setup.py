"""Packaging for the Keras model-surgery plugin.

Install with the README's command: the pinned requirements first, then kerassurgeon 0.2.0
without its broken metadata, then this package with --no-deps.
"""
from setuptools import find_packages, setup

setup(
    name="keras-surgery",
    version="0.1.0",
    description="Structured channel pruning for Keras models on top of kerassurgeon and tfmot",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["surgery", "surgery.*", "patches", "patches.*",
                                    "models", "models.*"]),
    py_modules=["data_generator", "train", "prune_and_finetune", "quiet_tf"],
    # kerassurgeon==0.2.0 is required too but must be installed with --no-deps
    # (see requirements.txt); listing it here would make pip resolve its bogus pins.
    install_requires=[
        "tensorflow==2.21.0",
        "tf-keras==2.21.0",
        "tensorflow-model-optimization==0.8.1",
        "numpy==2.4.6",
        "h5py==3.14.0",
        "importlib-metadata==8.7.0",
    ],
)
