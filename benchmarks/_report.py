"""Markdown tables and time-to-accuracy plots of the benchmark results."""

from __future__ import annotations

import re
from pathlib import Path

from _measure import Result, time_to_accuracy
from _outer import OuterResult
from _problems import Problem

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _sweep_table(results: list[Result]) -> list[str]:
    lines = [
        "| method | setting | products | rel. error | wall time (ms) | CPU time (ms) | "
        "peak memory (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r.family, r.setting)):
        mem = f"{r.peak_mb:.2f}" if r.peak_mb is not None else ""
        lines.append(
            f"| {r.family} | {r.setting} | {r.hvps} | {r.error:.1e} | {_ms(r.seconds)} | "
            f"{_ms(r.cpu_seconds)} | {mem} |"
        )
    return lines


def _equal_settings_table(results: list[Result]) -> list[str]:
    """CPU time of each CG implementation relative to the hand-written one at equal
    iterations (CPU time: the wall-time ratios of a shared machine are too noisy)."""
    by = {(r.family, r.setting): r for r in results}
    settings = sorted({r.setting for r in results if r.family == "hand-written CG"})
    families = [f for f in ("ig CG", "TorchOpt CG") if any(r.family == f for r in results)]
    head = "| iterations | hand-written CPU (ms) | " + " | ".join(
        f"{f} / hand-written" for f in families
    )
    lines = [head + " |", "|---:|---:|" + "---:|" * len(families)]
    for k in settings:
        base = by[("hand-written CG", k)].cpu_seconds
        cells = [f"{by[(f, k)].cpu_seconds / base:.2f}x" if (f, k) in by else "" for f in families]
        lines.append(f"| {k} | {_ms(base)} | " + " | ".join(cells) + " |")
    return lines


def _accuracy_table(results: list[Result], target: float) -> list[str]:
    lines = [
        f"| method | cheapest setting with error <= {target:g} | error | wall time (ms) | "
        "CPU time (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    best = time_to_accuracy(results, target)
    ranked = sorted(best.items(), key=lambda kv: kv[1].cpu_seconds if kv[1] else float("inf"))
    for family, r in ranked:
        if r is None:
            lines.append(f"| {family} | not reached | | | |")
        else:
            lines.append(
                f"| {family} | {r.setting} | {r.error:.1e} | {_ms(r.seconds)} | "
                f"{_ms(r.cpu_seconds)} |"
            )
    return lines


def _outer_table(outer: list[OuterResult]) -> list[str]:
    lines = [
        "| method | setting | hypergradient time (s) | products | final val. loss | "
        "total time (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for o in outer:
        lines.append(
            f"| {o.name} | {o.setting} | {o.hypergrad_seconds:.2f} | {o.hvps} | "
            f"{o.final_val_loss:.4f} | {o.total_seconds:.1f} |"
        )
    base = next((o for o in outer if o.name.startswith("TorchOpt normal CG")), None)
    if base is not None and outer:
        best = min(outer, key=lambda o: o.hypergrad_seconds)
        lines += [
            "",
            f"Initial validation loss {outer[0].initial_val_loss:.4f}. Fastest: **{best.name}**, "
            f"{base.hypergrad_seconds / best.hypergrad_seconds:.1f}x less hypergradient time "
            "than TorchOpt's default solver (normal CG).",
        ]
    return lines


def render(
    problems: dict[str, Problem],
    results: dict[str, list[Result]],
    outer: list[OuterResult] | None,
    info: dict[str, str],
    target: float,
    outer_steps: int = 50,
) -> str:
    lines = [
        f"Measured {info['date']} ({info['mode']} run, {info['total']} end to end) on "
        f"{info['cpu']}; Python {info['python']}, torch {info['torch']}, TorchOpt "
        f"{info['torchopt']}. Load average at the end of the run: {info['load']} (the "
        "machine was shared, so times carry noise of roughly ±20%).",
        "",
    ]
    for key, problem in problems.items():
        res = results[key]
        lines += [
            f"### {problem.name}",
            "",
            f"{problem.n_inner} inner and {problem.phi.numel()} outer parameters; reference "
            f"hypergradient by {problem.reference_kind}.",
            "",
            f"**Time to a relative error of {target:g}** (ranked by CPU time):",
            "",
            *_accuracy_table(res, target),
            "",
            "**Equal settings** (same number of CG iterations):",
            "",
            *_equal_settings_table(res),
            "",
            f"![error vs time]({'img/bench_' + key + '.png'})",
            "",
            "<details><summary>All measurements</summary>",
            "",
            *_sweep_table(res),
            "",
            "</details>",
            "",
        ]
    if outer:
        lines += [
            f"### {outer_steps}-step outer optimization (MLP data reweighting)",
            "",
            *_outer_table(outer),
            "",
        ]
    return "\n".join(lines)


def write(path: Path, markdown: str) -> None:
    """Replace the text between the result markers of `path` (or append the markers)."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    path.write_text(pattern.sub(lambda _: f"{START}\n{markdown}\n{END}", text))


def plots(
    problems: dict[str, Problem], results: dict[str, list[Result]], folder: Path, target: float
) -> None:
    """One log-log plot of error against CPU time per problem, one line per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots")
        return
    folder.mkdir(parents=True, exist_ok=True)
    for key, problem in problems.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        families = sorted({r.family for r in results[key]})
        for family in families:
            pts = sorted((r.cpu_seconds * 1e3, r.error) for r in results[key] if r.family == family)
            style = "--" if "TorchOpt" in family else ":" if "hand" in family else "-"
            ax.plot(*zip(*pts), style, marker="o", ms=3, label=family)
        ax.axhline(target, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("median CPU time per hypergradient (ms)")
        ax.set_ylabel("relative error vs reference")
        ax.set_title(problem.name)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / f"bench_{key}.png", dpi=110)
        plt.close(fig)
