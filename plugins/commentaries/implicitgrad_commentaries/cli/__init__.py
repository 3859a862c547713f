"""The `commentaries` command line (console script of implicitgrad-commentaries)."""

from .main import build_parser as build_parser
from .main import main as main

__all__ = ["main", "build_parser"]
