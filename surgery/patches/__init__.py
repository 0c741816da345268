"""Version-guarded compatibility patches that make stock kerassurgeon 0.2.0 run on tf-keras 2.21.

This package owns every change we make to the installed kerassurgeon: each patch lives in
``patches/kerassurgeon_0_2_0.py`` as one :class:`~patches.base.Patch` (one attribute
replaced in one place, with a docstring naming the upstream failure), and
:func:`apply_all` installs them once. Applying is idempotent and reversible
(:func:`revert_all`), which is what lets the tests show each failure without its patch.
Any kerassurgeon version other than 0.2.0 is refused with a clear error, because the
patches replace functions whose bodies they were written against.
"""
from __future__ import annotations

import logging

import importlib_metadata

from surgery.patches.base import Patch

SUPPORTED_KERASSURGEON = "0.2.0"

_log = logging.getLogger(__name__)


def _import_kerassurgeon_quietly():
    """Import kerassurgeon without its import-time ``logging.basicConfig(level=INFO)``.

    kerassurgeon/surgeon.py configures the *root* logger on import, which makes every
    INFO message of every library in the user's process appear on stderr. basicConfig
    does nothing when the root logger already has a handler, so one is held in place
    for the duration of the import.
    """
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    had_handlers = bool(root.handlers)
    if not had_handlers:
        root.addHandler(placeholder)
    try:  # lazy: kerassurgeon is Keras 2 only, and logs on import (hence the handler)
        import kerassurgeon  # noqa: F401
        import kerassurgeon.operations  # noqa: F401
        import kerassurgeon.surgeon  # noqa: F401
    except ModuleNotFoundError as err:
        raise ImportError(
            f"kerassurgeon {SUPPORTED_KERASSURGEON} is required but could not be imported "
            f"({err}). Install it without its broken metadata: "
            f"pip install --no-deps kerassurgeon=={SUPPORTED_KERASSURGEON}"
        ) from err
    finally:
        if not had_handlers:
            root.removeHandler(placeholder)


def installed_version() -> str:
    return importlib_metadata.version("kerassurgeon")


def check_version() -> None:
    version = installed_version()
    if version != SUPPORTED_KERASSURGEON:
        raise ImportError(
            f"kerassurgeon {version} is installed, but the patches in patches/ are written "
            f"for {SUPPORTED_KERASSURGEON} only (0.1.x imports standalone Keras 2.0 and cannot "
            f"work). Install the supported one: "
            f"pip install --no-deps kerassurgeon=={SUPPORTED_KERASSURGEON}"
        )


def all_patches() -> list[Patch]:
    from surgery.patches import kerassurgeon_0_2_0  # lazy: it imports kerassurgeon

    return list(kerassurgeon_0_2_0.PATCHES)


def apply_all() -> list[Patch]:
    """Apply every patch once (idempotent). Returns the patches in the order applied."""
    _import_kerassurgeon_quietly()
    check_version()
    patches = all_patches()
    for patch in patches:
        patch.apply()
    return patches


def revert_all() -> None:
    """Restore stock kerassurgeon (used by tests to show what each patch fixes)."""
    for patch in reversed(all_patches()):
        patch.revert()


__all__ = ["Patch", "apply_all", "revert_all", "all_patches", "check_version",
           "SUPPORTED_KERASSURGEON"]
