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

__all__ = ["GROUP", "PluginLoadError", "PluginFailure", "available", "load", "errors"]

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
    - `target`: the entry-point value, `"module:attribute"`.
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


def _entry_points() -> dict[str, EntryPoint]:
    # The first registration of a name wins, matching the order of sys.path.
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def _scan() -> tuple[dict[str, Any], list[PluginFailure]]:
    loaded: dict[str, Any] = {}
    failed: list[PluginFailure] = []
    for name, ep in sorted(_entry_points().items()):
        try:
            loaded[name] = ep.load()
        except Exception as err:  # a broken plugin must not hide the working ones
            failed.append(PluginFailure(name, _distribution(ep), ep.value, err))
    return loaded, failed


def _warn(failures: list[PluginFailure]) -> None:
    for f in failures:
        warn(
            f"implicitgrad plugin {f.name!r} (from {f.distribution}, {f.target}) failed to "
            f"import and is skipped: {type(f.error).__name__}: {f.error}",
            RuntimeWarning,
        )


def available() -> list[str]:
    """Names of the registered plugins that import successfully, sorted.

    Every plugin is imported to check it. Plugins that fail to import are left out, a
    `RuntimeWarning` names each of them, and [`errors`][implicitgrad.plugins.errors] lists
    them with their exceptions.

    **Returns:**

    A sorted list of plugin names.

    **Example:**

    ```python
    import implicitgrad as ig
    print(ig.plugins.available())
    ```
    """
    loaded, failed = _scan()
    _warn(failed)
    return sorted(loaded)


def errors() -> list[PluginFailure]:
    """The registered plugins that fail to import.

    One [`PluginFailure`][implicitgrad.plugins.PluginFailure] per plugin.

    **Returns:**

    A list of failures, sorted by name (empty when every plugin imports).

    **Example:**

    ```python
    import implicitgrad as ig
    assert all(f.name not in ig.plugins.available() for f in ig.plugins.errors())
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
    eps = _entry_points()
    ep = eps.get(name)
    if ep is None:
        names = ", ".join(repr(n) for n in sorted(eps)) or "none"
        raise InputError(
            f"`implicitgrad.plugins.load({name!r})`: no plugin of that name is registered in "
            f"the entry-point group {GROUP!r}. Registered plugins: {names}. Install the "
            "distribution that provides it (for the built-in commentaries: "
            "`pip install implicitgrad-commentaries`)."
        )
    try:
        return ep.load()
    except Exception as err:
        raise PluginLoadError(
            f"`implicitgrad.plugins.load({name!r})`: the plugin registered by "
            f"{_distribution(ep)} as {ep.value!r} failed to import: "
            f"{type(err).__name__}: {err}"
        ) from err
