"""The :class:`Patch` record: one attribute of one object replaced, reversibly."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(eq=False)
class Patch:
    """Replace ``getattr(owner(), attribute)`` with ``replacement``.

    ``owner`` is a zero-argument callable so the target module is imported only when the
    patch is applied. ``replacement`` may be a factory: when ``wraps_original`` is true it
    is called with the original attribute and must return the new one (for patches that
    add a branch in front of stock behaviour). Applying twice is a no-op; reverting
    restores exactly the object that was there before. Several patches may wrap the same
attribute; they must then be reverted in the reverse order (``revert_all`` does).
    """

    name: str
    owner: Callable[[], Any]
    attribute: str
    replacement: Callable
    wraps_original: bool = False
    doc: str = ""
    _original: Any = dataclasses.field(default=None, init=False, repr=False)
    _installed: Any = dataclasses.field(default=None, init=False, repr=False)

    @property
    def applied(self) -> bool:
        return self._installed is not None

    def apply(self) -> None:
        if self.applied:
            return
        target = self.owner()
        self._original = getattr(target, self.attribute)
        new = self.replacement(self._original) if self.wraps_original else self.replacement
        new.__patch__ = self.name
        setattr(target, self.attribute, new)
        self._installed = new

    def revert(self) -> None:
        if not self.applied:
            return
        setattr(self.owner(), self.attribute, self._original)
        self._installed = None
