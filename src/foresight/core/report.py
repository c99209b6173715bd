"""Reports: results.json -> REPORT.md (one run, or a combined report for ``foresight reproduce``).

Also holds the two small matplotlib helpers experiments use for their figures, so that every
figure in every report looks the same (Agg backend: no display needed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foresight.core.fs import atomic_write_text

VERDICT_MARK = {
    "reproduced": "✅ reproduced",
    "partial": "🟡 partial",
    "not reproduced": "❌ not reproduced",
    "error": "💥 error",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # NaN
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def _wall(res: dict[str, Any]) -> str:
    """This session's wall time, and the total over every session when the run was resumed."""
    total = res.get("wall_seconds_total")
    if res.get("resumed") and total is not None and total > res["wall_seconds"]:
        return f"{total:.1f} s over all sessions ({res['wall_seconds']:.1f} s in the last, resumed one)"
    return f"{res['wall_seconds']:.1f} s"


def _section(res: dict[str, Any], figures_prefix: str, level: str = "##") -> str:
    parts = [
        f"{level} {res['system']} — `{res['experiment']}`",
        "",
        f"**Paper:** {res.get('paper', '')}  ",
        f"**Claim:** {res['claim']}  ",
        f"**Verdict:** {VERDICT_MARK.get(res['verdict'], res['verdict'])} — rule: {res.get('rule', '')}  ",
        f"**Scale:** {res['scale']} · **seed:** {res['seed']} · **wall time:** {_wall(res)}",
        "",
    ]
    if res.get("protocol"):
        parts += [f"**Protocol.** {res['protocol']}", ""]
    if res.get("table"):
        parts += [markdown_table(res["table"]), ""]
    for title, rows in res.get("tables", {}).items():
        parts += [f"**{title}**", "", markdown_table(rows), ""]
    for fig in res.get("figures", []):
        parts += [f"![{fig}]({figures_prefix}figures/{fig})", ""]
    if res.get("notes"):
        parts += [f"**Notes.** {res['notes']}", ""]
    if res.get("error"):
        parts += ["```", res["error"], "```", ""]
    return "\n".join(parts)


def write_run_report(run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/REPORT.md`` from ``run_dir/results.json``."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no results.json (is it a finished run?)")
    res = json.loads(path.read_text())
    text = "# Foresight run report\n\n" + _section(res, "")
    out = run_dir / "REPORT.md"
    atomic_write_text(out, text)
    return out


def write_combined_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """One REPORT.md with a summary table and one section per experiment (in ``out``'s folder)."""
    out = Path(out)
    results = []
    for d in run_dirs:
        p = Path(d) / "results.json"
        if p.is_file():
            results.append((Path(d), json.loads(p.read_text())))
    summary = [
        {
            "system": r["system"],
            "experiment": r["experiment"],
            "verdict": VERDICT_MARK.get(r["verdict"], r["verdict"]),
            "wall s": round(r["wall_seconds"], 1),
        }
        for _, r in results
    ]
    parts = [
        "# Foresight — reproduction report",
        "",
        f"Scale: {results[0][1]['scale'] if results else '?'}. Each verdict is computed from the numbers "
        "by the rule stated beside it.",
        "",
        markdown_table(summary),
        "",
    ]
    for d, r in results:
        prefix = os.path.relpath(d, out.parent) + "/"
        parts.append(_section(r, prefix))
    atomic_write_text(out, "\n".join(parts))
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(
    path: str | os.PathLike,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    logy: bool = False,
) -> None:
    """One line per series: ``{label: (xs, ys)}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    if series:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(
    path: str | os.PathLike,
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    errors: dict[str, Sequence[float]] | None = None,
    title: str = "",
    ylabel: str = "",
) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series."""
    plt = _pyplot()
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups)), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (label, ys) in enumerate(series.items()):
        err = None if errors is None else errors.get(label)
        ax.bar(x + i * width - 0.4 + width / 2, list(ys), width, yerr=err, label=label, capsize=2)
    ax.set_xticks(x, list(groups), rotation=20)
    ax.set(title=title, ylabel=ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
