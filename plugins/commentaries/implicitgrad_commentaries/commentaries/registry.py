"""The installed commentary plugins: `implicitgrad.plugins`, checked against the contract.

The core's registry imports whatever an entry point names. Here a plugin also has to be
an [`AbstractCommentary`][implicitgrad_commentaries.AbstractCommentary] subclass; one
that is not (say an entry point naming an int) is reported like a plugin that fails to
import, with its own message, and never reaches the learner.
"""

from __future__ import annotations

from dataclasses import dataclass

import implicitgrad as ig
from implicitgrad import InputError

from .base import AbstractCommentary

__all__ = ["Discovery", "discover", "load_class"]


@dataclass(frozen=True)
class Discovery:
    """What one scan of the installed plugins found.

    **Fields:**

    - `classes`: name → commentary class, for the plugins that import and fit the contract.
    - `problems`: name → a one-line description of what is wrong with it, for the plugins
      that fail to import, are not commentary classes, or whose name is registered twice.
    """

    classes: dict[str, type[AbstractCommentary]]
    problems: dict[str, str]


def _check(name: str, obj: object) -> type[AbstractCommentary]:
    if isinstance(obj, type) and issubclass(obj, AbstractCommentary):
        return obj
    raise InputError(
        f"the commentary plugin {name!r} names {type(obj).__name__} {obj!r:.60}, not a "
        "subclass of implicitgrad_commentaries.AbstractCommentary; ask its authors to fix "
        "its entry point"
    )


def discover() -> Discovery:
    """Scan the installed commentary plugins once (no warnings; the problems are returned).

    **Returns:**

    A [`Discovery`][implicitgrad_commentaries.commentaries.registry.Discovery].
    """
    classes: dict[str, type[AbstractCommentary]] = {}
    problems: dict[str, list[str]] = {}
    for failure in ig.plugins.errors():
        what = (
            f"from {failure.distribution} ({failure.target}) fails to import: "
            f"{type(failure.error).__name__}: {failure.error}"
            if failure.target
            else str(failure.error)
        )
        problems.setdefault(failure.name, []).append(" ".join(what.split()))
    for name in ig.plugins.available(warn=False):
        try:
            classes[name] = _check(name, ig.plugins.load(name))
        except InputError as err:
            problems.setdefault(name, []).append(str(err))
    return Discovery(classes, {k: "; ".join(v) for k, v in problems.items()})


def load_class(name: str) -> type[AbstractCommentary]:
    """The commentary class registered as `name`.

    **Raises:**

    `InputError` (one line) if no plugin has that name, it fails to import (with the
    plugin's own error), or it is not an `AbstractCommentary` subclass.
    """
    try:
        obj = ig.plugins.load(name)
    except ig.plugins.PluginLoadError as err:
        raise InputError(" ".join(str(err).split())) from err
    return _check(name, obj)
