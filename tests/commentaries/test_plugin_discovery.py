"""`ig.plugins`: discovery through entry points, without and with the commentary plugins,
and a deliberately broken plugin that must be reported without hiding the others.

"Installed" and "not installed" are simulated in a subprocess that runs without the
virtual environment's `site` (`python -S`) on a copy of site-packages made of symlinks,
minus every implicitgrad distribution; a plugin is "installed" by adding a `.dist-info`
folder with an `entry_points.txt`, exactly what pip writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from commentary_helpers import declared_entry_points, write_dist_info

import implicitgrad as ig

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SRC = ROOT / "plugins" / "commentaries"

PROBE = textwrap.dedent(
    """
    import json, warnings
    import implicitgrad as ig
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = ig.plugins.available()
    failures = [
        {"name": f.name, "distribution": f.distribution, "error": repr(f.error)}
        for f in ig.plugins.errors()
    ]
    def attempt(name):
        try:
            obj = ig.plugins.load(name)
            return {"ok": getattr(obj, "__name__", repr(obj))}
        except Exception as err:
            return {"error": type(err).__name__, "message": str(err)}
    print(json.dumps({
        "available": names,
        "errors": failures,
        "warnings": [str(w.message) for w in caught],
        "load_weighting": attempt("weighting"),
        "load_broken": attempt("broken"),
        "load_unknown": attempt("no-such-plugin"),
    }))
    """
)


def _shadow_site(tmp: Path) -> Path:
    """site-packages as symlinks, without any implicitgrad distribution."""
    site = Path(torch.__file__).resolve().parents[1]  # wherever the dependencies live
    shadow = tmp / "site"
    shadow.mkdir()
    for entry in site.iterdir():
        if "implicitgrad" in entry.name or entry.suffix == ".pth":
            continue
        (shadow / entry.name).symlink_to(entry)
    return shadow


def _probe(paths: list[Path]) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(
        [sys.executable, "-S", "-c", PROBE],
        env=env,
        cwd=paths[0],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shadow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _shadow_site(tmp_path_factory.mktemp("plugins"))


def test_not_installed_lists_nothing(shadow: Path) -> None:
    result = _probe([shadow, ROOT])
    assert "weighting" not in result["available"] and "blending" not in result["available"]
    assert result["errors"] == []
    assert result["load_weighting"]["error"] == "InputError"
    assert "no plugin of that name" in result["load_weighting"]["message"]


def test_installed_lists_the_declared_plugins(shadow: Path, tmp_path: Path) -> None:
    declared = declared_entry_points()
    assert {"weighting", "blending"} <= set(declared)
    write_dist_info(tmp_path, "implicitgrad-commentaries", "0.1.0", declared)
    result = _probe([shadow, ROOT, PLUGIN_SRC, tmp_path])
    assert set(declared) <= set(result["available"])
    assert result["load_weighting"] == {"ok": "WeightingCommentary"}
    assert result["errors"] == [] and result["warnings"] == []


def test_broken_plugin_is_reported_and_does_not_hide_others(shadow: Path, tmp_path: Path) -> None:
    write_dist_info(tmp_path, "implicitgrad-commentaries", "0.1.0", declared_entry_points())
    write_dist_info(tmp_path, "broken-plugin", "0.0.1", {"broken": "broken_commentary_mod:Thing"})
    (tmp_path / "broken_commentary_mod.py").write_text(
        "raise RuntimeError('this plugin is deliberately broken')\n"
    )
    result = _probe([shadow, ROOT, PLUGIN_SRC, tmp_path])
    assert {"weighting", "blending"} <= set(result["available"])
    assert "broken" not in result["available"]
    (failure,) = result["errors"]
    assert failure["name"] == "broken"
    assert failure["distribution"] == "broken-plugin 0.0.1"
    assert "deliberately broken" in failure["error"]
    assert any("'broken'" in w and "deliberately broken" in w for w in result["warnings"])
    assert result["load_broken"]["error"] == "PluginLoadError"
    assert "broken-plugin 0.0.1" in result["load_broken"]["message"]
    unknown = result["load_unknown"]
    assert unknown["error"] == "InputError"
    assert "'blending'" in unknown["message"] and "'weighting'" in unknown["message"]


def test_load_rejects_non_string() -> None:
    with pytest.raises(ig.InputError, match="expects a string"):
        ig.plugins.load(3)  # type: ignore[arg-type]


def test_installed_environment_has_builtins() -> None:
    pytest.importorskip("implicitgrad_commentaries")
    if "weighting" not in ig.plugins.available():
        pytest.skip("implicitgrad-commentaries is importable but not pip-installed")
    assert {"weighting", "blending"} <= set(ig.plugins.available())
