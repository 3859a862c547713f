// MathJax configuration for pymdownx.arithmatex (generic mode), as documented by
// mkdocs-material. The library is vendor/mathjax/tex-svg-full.js, served with the site:
// it holds every TeX extension and its fonts, so rendering needs no network.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

document$.subscribe(() => {
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
