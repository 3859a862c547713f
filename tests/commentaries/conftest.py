"""Shared fixtures of the commentary plugin tests: a tiny dataset and the plugin source."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PLUGIN_SRC = Path(__file__).resolve().parents[2] / "plugins" / "commentaries"

try:  # the distribution is normally installed (pip install -e plugins/commentaries)
    import implicitgrad_commentaries  # noqa: F401
except ImportError:  # pragma: no cover - source tree without installation
    sys.path.insert(0, str(PLUGIN_SRC))

from commentary_helpers import make_tiny  # noqa: E402
from implicitgrad_commentaries.data import Dataset  # noqa: E402


@pytest.fixture
def tiny() -> Dataset:
    return make_tiny()
