"""Shared fixtures of the commentary plugin tests: a tiny dataset and the plugin source."""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

PLUGIN_SRC = Path(__file__).resolve().parents[2] / "plugins" / "commentaries"

try:  # the distribution is normally installed (pip install -e plugins/commentaries)
    import implicitgrad_commentaries  # noqa: F401
except ImportError:  # pragma: no cover - source tree without installation
    sys.path.insert(0, str(PLUGIN_SRC))


from commentary_helpers import declared_entry_points, make_tiny, write_dist_info  # noqa: E402
from implicitgrad_commentaries.data import Dataset  # noqa: E402


def _register_when_not_installed() -> None:
    """Run from a source tree without `pip install -e plugins/commentaries`: register the
    entry points for this test session the way pip would, in a temporary folder."""
    from importlib.metadata import entry_points

    if any(ep.name == "weighting" for ep in entry_points(group="implicitgrad.commentaries")):
        return
    where = Path(tempfile.mkdtemp(prefix="commentary-entry-points-"))
    write_dist_info(where, "implicitgrad-commentaries", "0+source", declared_entry_points())
    sys.path.append(str(where))
    atexit.register(shutil.rmtree, where, ignore_errors=True)


_register_when_not_installed()


@pytest.fixture
def tiny() -> Dataset:
    return make_tiny()


pytest.register_assert_rewrite("cli_helpers")
