"""Discover plugins registered by other distributions through entry points.

A plugin is any object that a distribution publishes under the entry-point group
`implicitgrad.commentaries`. The core does not know what a plugin does: it only finds,
imports and lists them, and reports the ones that fail to import without hiding the others.

**Registering a plugin.** In the plugin distribution's `pyproject.toml`:

```toml
[project.entry-points."implicitgrad.commentaries"]
my_commentary = "my_package.my_module:MyCommentary"
```

After `pip install` of that distribution, `ig.plugins.available()` lists `"my_commentary"`
and `ig.plugins.load("my_commentary")` returns `MyCommentary`. See the tutorial
`docs/tutorials/custom-plugin.md` for a complete commentary plugin.

**Example:**

```python
import implicitgrad as ig
names = ig.plugins.available()          # e.g. ['blending', 'weighting']
for failure in ig.plugins.errors():     # plugins that are registered but fail to import
    print(failure.name, failure.distribution, failure.error)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ._errors import ImplicitGradError, InputError, warn

__all__ = [
    "GROUP",
    "PluginLoadError",
    "PluginClashError",
    "PluginFailure",
    "available",
    "load",
    "errors",
]

GROUP = "implicitgrad.commentaries"
"""The entry-point group searched for plugins."""


class PluginLoadError(ImplicitGradError, ImportError):
    """A registered plugin could not be imported; the message carries the original error."""


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that is registered but fails to import.

    **Fields:**

    - `name`: the entry-point name.
    - `distribution`: the distribution that registered it (`"<unknown>"` if not known).
    - `target`: the entry-point value, `"module:attribute"` (empty for a name clash).
    - `error`: the exception raised while importing it.
    """

    name: str
    distribution: str
    target: str
    error: BaseException


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown>"
    return f"{dist.metadata['Name']} {dist.version}"


class PluginClashError(ImplicitGradError):
    """Two or more distributions register a plugin under the same name."""


def _registrations() -> dict[str, list[EntryPoint]]:
    """Every registration of every name. The distributions of implicitgrad itself (such
    as implicitgrad-commentaries) come first, then the order of `sys.path`: a third-party
    plugin that takes the name of a built-in one does not hide it."""
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, []).append(ep)
    for eps in found.values():
        eps.sort(key=lambda ep: not _distribution(ep).startswith("implicitgrad"))
    return found


def _entry_points() -> dict[str, EntryPoint]:
    return {name: eps[0] for name, eps in _registrations().items()}


def _import(ep: EntryPoint) -> Any:
    try:
        return ep.load()
    except (Exception, SystemExit) as err:  # a plugin may even call sys.exit at import
        if isinstance(err, SystemExit):
            err = PluginLoadError(f"the module called sys.exit({err.code!r}) while importing")
        raise PluginLoadError(f"{type(err).__name__}: {err}") from err


def _resolve(name: str, eps: list[EntryPoint]) -> tuple[Any, list[PluginFailure]]:
    """The first registration of `name` that imports (or `_MISSING`), and the failures:
    each registration that fails, and the clash itself when several distributions
    register the name."""
    failures: list[PluginFailure] = []
    loaded: Any = _MISSING
    winner: EntryPoint | None = None
    for ep in eps:
        try:
            obj = _import(ep)
        except PluginLoadError as err:
            cause = err.__cause__ if err.__cause__ is not None else err
            failures.append(PluginFailure(name, _distribution(ep), ep.value, cause))
            continue
        if loaded is _MISSING:
            loaded, winner = obj, ep
    if len(eps) > 1:
        dists = ", ".join(f"{_distribution(ep)} ({ep.value})" for ep in eps)
        used = f"using {_distribution(winner)}" if winner is not None else "none imports"
        clash = PluginClashError(
            f"the plugin name {name!r} is registered by {len(eps)} distributions: {dists}; "
            f"{used}. Uninstall one of them or ask its authors to rename the plugin."
        )
        failures.append(PluginFailure(name, ", ".join(_distribution(ep) for ep in eps), "", clash))
    return loaded, failures


_MISSING = object()


def _scan() -> tuple[dict[str, Any], list[PluginFailure]]:
    loaded: dict[str, Any] = {}
    failed: list[PluginFailure] = []
    for name, eps in sorted(_registrations().items()):
        obj, failures = _resolve(name, eps)
        if obj is not _MISSING:
            loaded[name] = obj
        failed.extend(failures)
    return loaded, failed


def _warn(failures: list[PluginFailure]) -> None:
    for f in failures:
        what = "failed to import and is skipped" if f.target else "is ambiguous"
        warn(
            f"implicitgrad plugin {f.name!r} (from {f.distribution}"
            + (f", {f.target}" if f.target else "")
            + f") {what}: {type(f.error).__name__}: {f.error}",
            RuntimeWarning,
        )


def available(*, warn: bool = True) -> list[str]:
    """Names of the registered plugins that import successfully, sorted.

    Every plugin is imported to check it; whatever a plugin's module raises at import
    (even `SystemExit`) is caught. Plugins that fail to import are left out, a
    `RuntimeWarning` names each of them, and [`errors`][implicitgrad.plugins.errors] lists
    them with their exceptions. A name registered by several distributions is available
    when one of them imports, the distributions of implicitgrad first; the clash is
    reported too.

    **Arguments:**

    - `warn`: issue the `RuntimeWarning`s (default `True`); callers that report
      [`errors`][implicitgrad.plugins.errors] themselves pass `False`.

    **Returns:**

    A sorted list of plugin names.

    **Example:**

    ```python
    import implicitgrad as ig
    print(ig.plugins.available())
    ```
    """
    loaded, failed = _scan()
    if warn:
        _warn(failed)
    return sorted(loaded)


def errors() -> list[PluginFailure]:
    """The registered plugins that fail to import, and the names registered twice.

    One [`PluginFailure`][implicitgrad.plugins.PluginFailure] per registration that fails
    to import, and one per name that several distributions register (its `error` is a
    [`PluginClashError`][implicitgrad.plugins.PluginClashError] that names them, its
    `target` is empty); such a name may still be available, from the distribution that
    imports.

    **Returns:**

    A list of failures, sorted by name (empty when every plugin imports).

    **Example:**

    ```python
    import implicitgrad as ig
    clashes = [f for f in ig.plugins.errors() if not f.target]  # names registered twice
    for f in clashes:
        print(f.error)
    ```
    """
    return _scan()[1]


def load(name: str) -> Any:
    """Import and return the plugin registered under `name`.

    **Arguments:**

    - `name`: an entry-point name in the group `implicitgrad.commentaries`.

    **Returns:**

    The object the entry point refers to (for commentary plugins, a commentary class).

    **Raises:**

    - [`InputError`][implicitgrad.InputError] if no plugin has that name; the message lists
      the available ones.
    - [`PluginLoadError`][implicitgrad.plugins.PluginLoadError] if the plugin is registered
      but fails to import.

    **Example:**

    ```python
    import implicitgrad as ig
    if "blending" in ig.plugins.available():
        Blending = ig.plugins.load("blending")
    ```
    """
    if not isinstance(name, str):
        raise InputError(
            f"`implicitgrad.plugins.load(name=...)` expects a string, got {type(name).__name__}."
        )
    registrations = _registrations()
    eps = registrations.get(name)
    if not eps:
        names = ", ".join(repr(n) for n in sorted(registrations)) or "none"
        raise InputError(
            f"`implicitgrad.plugins.load({name!r})`: no plugin of that name is registered in "
            f"the entry-point group {GROUP!r}. Registered plugins: {names}. Install the "
            "distribution that provides it (for the built-in commentaries: "
            "`pip install implicitgrad-commentaries`)."
        )
    obj, failures = _resolve(name, eps)
    if obj is _MISSING:
        first = failures[0]
        raise PluginLoadError(
            f"`implicitgrad.plugins.load({name!r})`: the plugin registered by "
            f"{first.distribution} as {first.target!r} failed to import: "
            f"{type(first.error).__name__}: {first.error}"
        ) from first.error
    return obj
