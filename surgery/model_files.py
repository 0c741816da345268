"""Refusing model files that would run code when loaded, before anything is deserialised.

tf-keras 2.21 loads a legacy ``.h5`` that holds a ``Lambda`` layer by unmarshalling the
layer's Python bytecode and calling it, with no warning (the native ``.keras`` format is
protected by Keras's ``safe_mode``). :func:`check_model_file` reads the stored model
configuration as JSON text (``h5py`` attributes of a ``.h5``/``.hdf5``, ``config.json`` of a
``.keras`` zip), never unpickles or unmarshals anything, and raises
:class:`~surgery.errors.SurgeryError` naming the layer when it finds a ``Lambda`` layer (at
any depth: nested models, wrappers), a function stored as code (``function_type: lambda``)
or a string that decodes to marshalled bytecode or a pickle. Both CLIs call it before
``load_model`` unless given ``--trust-model-code``; :func:`load_model_checked` is the same
for Python users.

This module imports TensorFlow only inside :func:`load_model_checked` (h5py, json and zipfile
at import), though importing it as ``surgery.model_files`` imports the ``surgery`` package.

Example::

    import surgery
    surgery.check_model_file("downloaded.h5")          # raises SurgeryError if unsafe
    model = surgery.load_model_checked("downloaded.h5")
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import zipfile
from typing import Any, Iterator, List, Optional, Tuple

import h5py

from surgery._backend import keras
from surgery.errors import SurgeryError

_log = logging.getLogger(__name__)

#: Layer classes whose configuration carries Python code that loading runs.
CODE_LAYERS = ("Lambda",)
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]{16,}$")
_MARSHAL_CODE = (0x63, 0xE3)  # marshal's TYPE_CODE, without and with FLAG_REF


def _looks_like_code(text: str) -> bool:
    """Whether ``text`` is base64 of marshalled bytecode or of a pickle (decoded only as
    bytes, never loaded)."""
    if not _BASE64.match(text):
        return False
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) < 24:
        return False
    if raw[0] in _MARSHAL_CODE:  # code object: small argcount and posonlyargcount follow
        return int.from_bytes(raw[1:5], "little") < 256 and \
            int.from_bytes(raw[5:9], "little") < 256
    return raw[0] == 0x80 and 2 <= raw[1] <= 5 and raw.rstrip()[-1:] == b"."  # a pickle


def _findings(node: Any, layer: Optional[Tuple[str, str]] = None
              ) -> Iterator[Tuple[Tuple[str, str], str]]:
    """Yield ``((layer name, class), reason)`` for everything in a config that holds code."""
    if isinstance(node, dict):
        cls = node.get("class_name")
        config = node.get("config")
        if isinstance(cls, str) and isinstance(config, dict):
            layer = (str(config.get("name", "?")), cls)
            if cls in CODE_LAYERS:
                yield layer, f"a {cls} layer stores Python code that loading runs"
        if node.get("function_type") == "lambda" or node.get("output_shape_type") == "lambda":
            yield layer or ("?", "?"), "a function stored as marshalled bytecode"
        for key, value in node.items():
            if key in ("function", "output_shape") and isinstance(value, (list, tuple)) \
                    and value and isinstance(value[0], str) and _looks_like_code(value[0]):
                yield layer or ("?", "?"), "a function stored as marshalled bytecode"
            yield from _findings(value, layer)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _findings(value, layer)
    elif isinstance(node, str) and _looks_like_code(node):
        yield layer or ("?", "?"), "a string that decodes to bytecode or a pickle"


def _stored_configs(path: str) -> List[Any]:
    """The JSON configurations stored in ``path``, parsed as plain JSON (no Keras)."""
    if zipfile.is_zipfile(path):  # .keras
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("config.json")]
            return [json.loads(zf.read(n).decode("utf-8")) for n in names]
    if not h5py.is_hdf5(path):
        return []
    configs = []
    with h5py.File(path, "r") as f:
        for key in ("model_config", "training_config"):
            text = f.attrs.get(key)
            if text is None:
                continue
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            try:
                configs.append(json.loads(text))
            except (TypeError, ValueError) as exc:
                raise SurgeryError(f"{path}: the stored {key} is not valid JSON ({exc}); "
                                   f"cannot check the file, so it is not loaded") from None
    return configs


def check_model_file(path: str, trust_code: bool = False) -> None:
    """Raise :class:`SurgeryError` if loading the model at ``path`` would run code stored in
    it: a ``Lambda`` layer at any depth, a function stored as bytecode, or a pickle.

    Reads the stored configuration as JSON only; nothing is deserialised, so nothing in the
    file runs. With ``trust_code=True`` it checks nothing. Files that hold no model
    configuration (not HDF5, weights only) pass; ``load_model`` reports those.

    Raises:
        SurgeryError: naming the layer and the way out (``trust_code=True`` / the CLIs'
            ``--trust-model-code``, or rebuilding the layer as a registered custom layer).
    """
    if trust_code:
        return
    if not isinstance(path, (str, os.PathLike)):
        raise SurgeryError(f"path must be a file name, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SurgeryError(f"model file not found: {path}")
    for config in _stored_configs(path):
        for (name, cls), reason in _findings(config):
            raise SurgeryError(
                f"{path}: layer '{name}' ({cls}): {reason}, so loading it would execute code "
                f"from the file; refusing. If you trust the file, pass trust_code=True "
                f"(CLI: --trust-model-code), or replace the layer with a registered custom "
                f"layer and save again")


def load_model_checked(path: str, trust_code: bool = False, compile: bool = False):
    """:func:`check_model_file`, then ``keras.models.load_model`` (``safe_mode`` on unless
    ``trust_code``). Returns the model."""
    check_model_file(path, trust_code=trust_code)
    return keras.models.load_model(path, compile=compile, safe_mode=not trust_code)


__all__ = ["check_model_file", "load_model_checked", "CODE_LAYERS"]
