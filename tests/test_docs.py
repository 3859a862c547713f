"""The documentation stays complete and true.

- Every public symbol (`implicitgrad.__all__`, `implicitgrad.testing.__all__`,
  `implicitgrad.plugins.__all__`, `implicitgrad_commentaries.__all__`) has a
  `::: module.Name` block in the Markdown under `docs/`.
- Every fenced `python` block in `docs/**/*.md` runs. The blocks of one page run in order in
  one namespace, like a notebook. A block preceded by the line `<!-- skip -->` is not run. A
  block followed by a fence with the info string `text title="Output"` must print exactly
  that text.
- Every `python` block in the docstring of a public symbol (the `**Example:**` blocks) runs,
  each in a fresh namespace.
- The site builds offline with `mkdocs build --strict` (which also rejects broken links and
  anchors) and renders math and highlighted code. Marked slow; it needs the `docs` extra.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import importlib.util
import inspect
import io
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PLUGIN_DIR = ROOT / "plugins" / "commentaries"

SKIP_MARKER = "<!-- skip -->"
OUTPUT_INFO = re.compile(r"""^\w*\s+.*title=["']Output["']""")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
REFERENCE = re.compile(r"^[ \t]*:::[ \t]+(?P<name>[\w.]+)[ \t]*$", re.MULTILINE)


# --------------------------------------------------------------------------------------------
# Which modules the API reference must cover.


def _import_commentaries() -> types.ModuleType | None:
    """`implicitgrad_commentaries`, from the installed distribution or the source tree."""
    try:
        return importlib.import_module("implicitgrad_commentaries")
    except ImportError:
        pass
    for candidate in (PLUGIN_DIR, PLUGIN_DIR / "src"):
        if (candidate / "implicitgrad_commentaries").is_dir():
            sys.path.insert(0, str(candidate))
            return importlib.import_module("implicitgrad_commentaries")
    return None


def public_modules() -> list[str]:
    """The modules whose public names must all appear in the API reference."""
    import implicitgrad

    names = ["implicitgrad", "implicitgrad.testing"]
    if hasattr(implicitgrad, "plugins"):
        names.append("implicitgrad.plugins")
    if _import_commentaries() is not None:
        names.append("implicitgrad_commentaries")
    return names


def public_names(module_name: str) -> list[str]:
    """`module.__all__` as fully qualified names, without dunders and submodules.

    A submodule listed in `__all__` (such as `implicitgrad.testing`) is covered through its
    own `__all__`, which `public_modules` lists separately.
    """
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        exported = [
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == module_name
        ]
    return [
        f"{module_name}.{name}"
        for name in exported
        if not (name.startswith("__") and name.endswith("__"))
        and not isinstance(getattr(module, name), types.ModuleType)
    ]


# --------------------------------------------------------------------------------------------
# Checker 1: every public symbol is documented.


def markdown_files(docs_dir: Path) -> list[Path]:
    return sorted(p for p in docs_dir.rglob("*.md") if "scripts" not in p.parts)


def documented_names(docs_dir: Path) -> set[str]:
    """The identifiers of all `::: identifier` blocks in the Markdown under `docs_dir`."""
    found: set[str] = set()
    for path in markdown_files(docs_dir):
        found.update(m["name"] for m in REFERENCE.finditer(path.read_text(encoding="utf-8")))
    return found


def undocumented(modules: Iterable[str], docs_dir: Path) -> list[str]:
    """Public names of `modules` that have no `::: name` block under `docs_dir`."""
    documented = documented_names(docs_dir)
    return [name for module in modules for name in public_names(module) if name not in documented]


# --------------------------------------------------------------------------------------------
# Checker 2: the examples run.


@dataclass(frozen=True)
class Example:
    """One fenced Python block: where it is, its code, and the output it promises."""

    where: str
    line: int
    code: str
    skip: bool
    expected_output: str | None


def extract_examples(text: str, where: str) -> list[Example]:
    """The fenced `python` blocks of a Markdown text, with their skip/output annotations."""
    lines = text.splitlines()
    blocks: list[tuple[int, str, str, str]] = []  # (line, info, body, previous line)
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, fence, info = len(m["indent"]), m["fence"], m["info"].strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        previous = next((s.strip() for s in reversed(lines[:i]) if s.strip()), "")
        blocks.append((i + 1, info, "\n".join(body) + "\n", previous))
        i = j + 1
    examples = []
    for k, (line, info, body, previous) in enumerate(blocks):
        language = info.split()[0].lower() if info else ""
        if language not in ("python", "py"):
            continue
        expected = None
        if k + 1 < len(blocks) and OUTPUT_INFO.match(blocks[k + 1][1]):
            expected = blocks[k + 1][2]
        examples.append(Example(where, line, body, previous == SKIP_MARKER, expected))
    return examples


def run_examples(examples: Iterable[Example]) -> None:
    """Run examples in order in one namespace; raise `AssertionError` naming the first failure."""
    # A real module, so that classes defined in an example (e.g. dataclasses) can find it.
    module = types.ModuleType("docs_example")
    namespace = module.__dict__
    previous = sys.modules.get(module.__name__)
    sys.modules[module.__name__] = module
    try:
        _run_in(examples, namespace)
    finally:
        if previous is None:
            sys.modules.pop(module.__name__, None)
        else:
            sys.modules[module.__name__] = previous


def _run_in(examples: Iterable[Example], namespace: dict[str, object]) -> None:
    for ex in examples:
        if ex.skip:
            continue
        out = io.StringIO()
        try:
            code = compile(ex.code, f"{ex.where}:{ex.line}", "exec")
            with contextlib.redirect_stdout(out):
                exec(code, namespace)
        except Exception as err:
            raise AssertionError(
                f"The example at {ex.where}:{ex.line} fails with {type(err).__name__}: {err}"
            ) from err
        if ex.expected_output is not None and out.getvalue().strip() != ex.expected_output.strip():
            raise AssertionError(
                f"The example at {ex.where}:{ex.line} prints\n{out.getvalue()}\nbut the docs "
                f"show\n{ex.expected_output}\nRun it and paste its real output."
            )


def page_examples(path: Path) -> list[Example]:
    return extract_examples(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))


def docstring_examples(qualified_name: str) -> list[Example]:
    """The fenced blocks in the docstring of a public object and of its public methods."""
    module_name, _, name = qualified_name.rpartition(".")
    obj = getattr(importlib.import_module(module_name), name)
    owners = [(qualified_name, obj)]
    if inspect.isclass(obj):
        owners += [
            (f"{qualified_name}.{attr}", value)
            for attr, value in vars(obj).items()
            if not attr.startswith("_") and callable(value)
        ]
    examples = []
    for where, owner in owners:
        doc = owner.__doc__ if isinstance(owner, types.ModuleType) else inspect.getdoc(owner)
        if doc and (where == qualified_name or owner.__doc__ is not None):
            examples += extract_examples(doc, f"docstring of {where}")
    return examples


# --------------------------------------------------------------------------------------------
# Checker 3: the built pages show no raw Markdown (math, emphasis, links, admonitions).

_CODE_OR_MATH = re.compile(
    r"<code.*?</code>|<pre.*?</pre>|<(span|div) class=\"arithmatex\">.*?</\1>", re.DOTALL
)
_RAW_MARKUP = re.compile(r"\$[^$\n]{1,80}\$|\*\*\w|\]\[[\w.]+\]|^!!! |^```", re.MULTILINE)


def unrendered_markup(page_html: str) -> list[str]:
    """Markdown left raw in the prose of a built page, e.g. math that arithmatex missed."""
    start, end = page_html.find("<article"), page_html.find("</article>")
    prose = _CODE_OR_MATH.sub("", page_html[start:end])
    text = html.unescape(re.sub(r"<[^>]+>", "", prose))
    return _RAW_MARKUP.findall(text)


# --------------------------------------------------------------------------------------------
# Checker 4: the built pages work offline and show tables as tables.

MATHJAX = "javascripts/vendor/mathjax/tex-svg-full.js"
_SCRIPT_SRC = re.compile(r"""<script\b[^>]*\bsrc=["']?(?P<src>[^"' >]+)""", re.IGNORECASE)
_PRE = re.compile(r"<pre\b.*?</pre>", re.DOTALL)
_TABLE_RULE = re.compile(r"^\s*\|(\s*:?-{3,}:?\s*\|)+\s*$", re.MULTILINE)


def external_scripts(page_html: str) -> list[str]:
    """Scripts a page would fetch from another host (`http://`, `https://`, `//host`)."""
    return [
        m["src"]
        for m in _SCRIPT_SRC.finditer(page_html)
        if re.match(r"(https?:)?//", m["src"], re.IGNORECASE)
    ]


def tables_in_code(page_html: str) -> int:
    """How many code blocks of a page hold a Markdown table (it should have been rendered)."""
    return sum(
        1
        for block in _PRE.findall(page_html)
        if _TABLE_RULE.search(html.unescape(re.sub(r"<[^>]+>", "", block)))
    )


def signature_of(page_html: str, identifier: str) -> str:
    """The text of the signature block that follows the heading `id="identifier"`."""
    start = page_html.index(f'id="{identifier}"')
    m = re.search(r'<div class="doc-signature[^"]*">(.*?)</div>', page_html[start:], re.DOTALL)
    assert m is not None, f"{identifier}: no separate signature block"
    return html.unescape(re.sub(r"<[^>]+>", "", m[1]))


# --------------------------------------------------------------------------------------------
# The tests.


def test_every_public_symbol_is_in_the_api_reference() -> None:
    missing = undocumented(public_modules(), DOCS)
    assert not missing, (
        "These public symbols have no `::: name` block in docs/api/*.md; add one to the page "
        f"of their concept: {missing}"
    )


def test_every_reference_block_names_an_existing_object() -> None:
    for name in sorted(documented_names(DOCS)):
        module_name, _, attr = name.rpartition(".")
        try:
            module = importlib.import_module(name)
        except ImportError:
            module = importlib.import_module(module_name)
            assert hasattr(module, attr), f"`::: {name}` refers to nothing: {module_name}.{attr}"
        else:
            assert isinstance(module, types.ModuleType)


PAGES = markdown_files(DOCS)


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_examples_run(path: Path) -> None:
    run_examples(page_examples(path))


def _all_public_names() -> list[str]:
    names = []
    for module in public_modules():
        names.append(module)
        names += public_names(module)
    return names


@pytest.mark.parametrize("name", _all_public_names())
def test_docstring_examples_run(name: str) -> None:
    # The attribute first: a public function may share its name with an old submodule
    # (`implicitgrad_commentaries.learn`), and importing `name` would find the module.
    parent, _, attr = name.rpartition(".")
    obj = getattr(importlib.import_module(parent), attr, None) if parent else None
    if obj is not None and not isinstance(obj, types.ModuleType):
        examples = docstring_examples(name)
    else:
        module = importlib.import_module(name)
        examples = extract_examples(inspect.cleandoc(module.__doc__ or ""), f"docstring of {name}")
    run_examples(examples)


def test_public_functions_of_the_core_carry_an_example() -> None:
    """The house style asks for a runnable example in every public function's docstring."""
    lacking = []
    for module in [m for m in public_modules() if m.split(".")[0] == "implicitgrad"]:
        for name in public_names(module):
            module_name, _, attr = name.rpartition(".")
            obj = getattr(importlib.import_module(module_name), attr)
            if inspect.isfunction(obj) and not docstring_examples(name):
                lacking.append(name)
    assert not lacking, f"These public functions have no ```python example: {lacking}"


def _load_script(name: str) -> types.ModuleType:
    path = DOCS / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_scripts_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


TABLE_ROW = re.compile(r"^\|(?P<cells>.*)\|\s*$", re.MULTILINE)


def documented_solver_rows(text: str) -> dict[tuple[str, str], tuple[float, float, int]]:
    """(problem, solver) -> (relative error, cosine, HVPs) from the tables of the page."""
    rows = {}
    for m in TABLE_ROW.finditer(text):
        cells = [c.strip() for c in m["cells"].split("|")]
        if len(cells) == 6 and cells[1].startswith("`"):  # quadratic table: κ | solver | ...
            problem, solver, rel, cos, hvps = cells[0], cells[1].strip("`"), *cells[2:5]
        elif len(cells) == 4 and cells[0].startswith("`"):  # ridge table: solver | ...
            problem, solver, rel, cos, hvps = "ridge", cells[0].strip("`"), *cells[1:4]
        else:
            continue
        rows[(problem, solver)] = (float(rel), float(cos), int(hvps))
    return rows


def test_solver_tables_match_a_fresh_measurement() -> None:
    """The numbers of "How to choose a solver" are those the script measures today."""
    script = _load_script("solver_accuracy")
    measured = {
        (r.problem, r.solver): r
        for r in [*script.quadratic_rows(repeats=1), *script.ridge_rows(repeats=1)]
    }
    documented = documented_solver_rows((DOCS / "choosing-a-solver.md").read_text("utf-8"))
    assert set(documented) == set(measured)
    for key, (rel, cos, hvps) in documented.items():
        row = measured[key]
        if "tol=" in key[1]:
            # A solver that stops at a tolerance may take a product more or fewer where the
            # residual crosses it: rounding differs between CPU kernels (AVX2 against
            # AVX-512 MKL gave 276 and 277 on the κ = 1000 problem).
            assert abs(row.hvps - hvps) <= max(2, 0.02 * hvps), (key, row)
        else:  # a fixed number of products by construction
            assert row.hvps == hvps, (key, row)
        assert abs(row.cosine - cos) <= 1.1e-3, (key, row)
        if rel >= 1e-8:  # two or three significant digits are shown
            assert abs(row.rel_error - rel) <= 0.06 * rel, (key, row)
        else:  # rounding-level errors differ between machines; only their size is claimed
            assert row.rel_error < 1e-8, (key, row)


# --------------------------------------------------------------------------------------------
# The checkers can fail.


def test_coverage_check_reports_an_undocumented_symbol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("docs_dummy")
    module.__all__ = ["documented", "forgotten", "__version__"]  # type: ignore[attr-defined]
    module.documented = lambda: None  # type: ignore[attr-defined]
    module.forgotten = lambda: None  # type: ignore[attr-defined]
    module.__version__ = "0"
    monkeypatch.setitem(sys.modules, "docs_dummy", module)
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "dummy.md").write_text("# Dummy\n\n::: docs_dummy.documented\n")
    assert undocumented(["docs_dummy"], tmp_path) == ["docs_dummy.forgotten"]
    (tmp_path / "api" / "dummy.md").write_text(
        "::: docs_dummy.documented\n\n    options:\n      show_source: false\n\n"
        "::: docs_dummy.forgotten\n"
    )
    assert undocumented(["docs_dummy"], tmp_path) == []


BROKEN_PAGE = """\
# A page

```python
import math
x = math.sqrt(4.0)
```

<!-- skip -->
```python
this block is not run
```

```python
print(x + 1)
```

```text title="Output"
{printed}
```

```python
assert x == 3.0, "wrong claim"
```
"""


def test_example_check_reports_a_broken_example() -> None:
    good = extract_examples(BROKEN_PAGE.format(printed="3.0"), "page.md")
    assert [ex.skip for ex in good] == [False, True, False, False]
    assert good[2].expected_output == "3.0\n"
    run_examples(good[:3])  # shared namespace, skip honoured, output matches
    with pytest.raises(AssertionError, match=r"page\.md:21 fails with AssertionError: wrong"):
        run_examples(good)
    wrong_output = extract_examples(BROKEN_PAGE.format(printed="4.0"), "page.md")
    with pytest.raises(AssertionError, match=r"page\.md:13 prints\n3\.0\n"):
        run_examples(wrong_output[:3])


def test_rendering_check_reports_raw_markdown() -> None:
    good = (
        '<article><p>Solve <span class="arithmatex">\\(Hx = v\\)</span> with '
        "<code>$x$</code>.</p><pre><code>**kwargs</code></pre></article>"
    )
    assert unrendered_markup(good) == []
    bad = "<article><p>Solve $Hx = v$ with **CG** and [`CG`][implicitgrad.CG].</p></article>"
    assert len(unrendered_markup(bad)) == 3


def test_offline_checks_report_external_scripts_and_tables_in_code() -> None:
    good = (
        '<script src="../javascripts/vendor/mathjax/tex-svg-full.js"></script>'
        "<pre><code>| not | a table |</code></pre><table><tr><td>1</td></tr></table>"
    )
    assert external_scripts(good) == [] and tables_in_code(good) == 0
    bad = (
        '<script src="https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js"></script>'
        "<script src=//cdn.example/x.js></script>"
        '<pre><span class="n">| a | b |</span>\n<span>|---|---|</span>\n| 1 | 2 |</pre>'
    )
    assert external_scripts(bad) == ["https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js"] + [
        "//cdn.example/x.js"
    ]
    assert tables_in_code(bad) == 1


def test_pages_name_every_registered_commentary() -> None:
    """The pages that list the commentary plugins name each one `commentaries list` shows."""
    import implicitgrad as ig

    if _import_commentaries() is None:
        pytest.skip("the commentaries distribution is not installed")
    # Only this distribution's commentaries: a test may have registered others.
    names = [
        n
        for n in ig.plugins.available()
        if ig.plugins.load(n).__module__.startswith("implicitgrad_commentaries")
    ]
    assert {"blending", "masks", "weighting"} <= set(names)
    for page in ["api/plugins.md", "commentaries.md"]:
        text = (DOCS / page).read_text(encoding="utf-8")
        missing = [n for n in names if f"`{n}`" not in text and f'"{n}"' not in text]
        assert not missing, f"docs/{page} does not name the registered commentaries {missing}"
    number = {2: "two", 3: "three", 4: "four", 5: "five"}
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for count, word in number.items():
            if count != len(names) and re.search(rf"\b{word} commentaries\b", text, re.I):
                pytest.fail(f"{page.relative_to(DOCS)} says {word} commentaries, not {len(names)}")


def test_example_check_reports_a_broken_docstring_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def shout(text: str) -> str:
        """Upper-case `text`.

        **Example:**

        ```python
        from docs_dummy_fn import shout
        assert shout("a") == "a"
        ```
        """
        return text.upper()

    module = types.ModuleType("docs_dummy_fn")
    module.shout = shout  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "docs_dummy_fn", module)
    examples = docstring_examples("docs_dummy_fn.shout")
    assert len(examples) == 1
    with pytest.raises(AssertionError, match="docstring of docs_dummy_fn.shout:5 fails"):
        run_examples(examples)


# --------------------------------------------------------------------------------------------
# The site builds.


@pytest.mark.slow
def test_site_builds_strictly_with_math_and_highlighting(tmp_path: Path) -> None:
    for needed in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if os.environ.get("IMPLICITGRAD_REQUIRE_DOCS"):
            # CI sets this: there a missing docs stack is a failure, not a skip.
            importlib.import_module(needed)
        else:
            pytest.importorskip(needed, reason='the site build needs `pip install -e ".[docs]"`')
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-5000:]}"
    for page in ["concepts", "api/hypergradients", "api/solvers"]:
        html = (site / page / "index.html").read_text(encoding="utf-8")
        assert 'class="arithmatex"' in html, f"{page}: math is not rendered by arithmatex"
        assert 'class="highlight"' in html, f"{page}: code blocks are not highlighted"
    for page in sorted(site.rglob("index.html")):
        leftovers = unrendered_markup(page.read_text(encoding="utf-8"))
        assert not leftovers, f"{page.relative_to(site)} shows raw Markdown: {leftovers}"
    api = (site / "api" / "hypergradients" / "index.html").read_text(encoding="utf-8")
    assert 'id="implicitgrad.hypergrad"' in api
    assert "<strong>Arguments:</strong>" in api
    # Math renders with no network: every page loads the MathJax shipped with the site, and
    # no page loads a script from another host.
    assert (site / MATHJAX).stat().st_size > 1_000_000, "the vendored MathJax is missing"
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        name = page.relative_to(site)
        assert not external_scripts(text), f"{name} loads {external_scripts(text)}"
        assert "fonts.googleapis.com" not in text, f"{name} loads web fonts"
        if 'class="arithmatex"' in text:
            assert MATHJAX in text and "javascripts/mathjax.js" in text, f"{name}: no MathJax"
        assert not tables_in_code(text), f"{name} shows a Markdown table as code"
    # Signatures are formatted (mkdocstrings runs ruff, from the docs extra): one parameter
    # per line instead of a single line that scrolls sideways.
    signature = signature_of(api, "implicitgrad.hypergrad")
    assert signature.startswith("hypergrad(\n    inner_loss: "), signature
    assert len(signature.splitlines()) > 5 and max(map(len, signature.splitlines())) < 80
