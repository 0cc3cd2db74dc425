"""A self-contained HTML report (PNG plots inlined as base64, no network) plus the PNG files.

Plots: metric-vs-K curves, per-segment bars, calibration (when a model outputs probabilities),
exposure / popularity distribution. matplotlib is imported only when a report is written, with the
Agg backend (no display).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from shelf.evaluation.runner import EvaluationResult


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 4.0), dpi=100)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def plot_metric_vs_k(result: EvaluationResult, metric: str, view: str, path: Path) -> Path:
    fig, ax = _figure()
    for model in result.runs:
        ks = [r.k for r in result.rows if r.model == model and r.metric == metric and r.view == view]
        vs = [r.value for r in result.rows if r.model == model and r.metric == metric and r.view == view]
        ax.plot(ks, vs, marker="o", label=model)
    ax.set(xlabel="K", ylabel=f"{metric}@K", title=f"{metric} vs K ({view})")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_segments(result: EvaluationResult, metric: str, k: int, path: Path) -> Path:
    fig, ax = _figure()
    models = list(result.runs)
    segs = [(r.kind, r.segment) for r in result.segments(models[0], metric, k)]
    x = np.arange(len(segs))
    width = 0.8 / max(len(models), 1)
    for j, model in enumerate(models):
        vals = {(r.kind, r.segment): r.mean for r in result.segments(model, metric, k)}
        ax.bar(x + j * width, [vals.get(s, np.nan) for s in segs], width, label=model)
    ax.set_xticks(x + 0.4 - width / 2, [f"{kind}: {seg}" for kind, seg in segs], rotation=60, ha="right", fontsize=7)
    ax.set(ylabel=f"{metric}@{k}", title=f"{metric}@{k} by user segment (all)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_exposure(result: EvaluationResult, k: int, path: Path) -> Path:
    fig, ax = _figure()
    for model, run in result.runs.items():
        ex = run.exposure.get(("all", k))
        if ex is None or ex.sum() == 0:
            continue
        share = np.sort(ex)[::-1].cumsum() / ex.sum()
        ax.plot(np.arange(1, len(share) + 1) / len(share), share, label=model)
    ax.set(xlabel="share of catalogue (most exposed first)", ylabel="share of recommendation slots", title=f"exposure concentration @{k}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_calibration(result: EvaluationResult, path: Path) -> Path | None:
    curves = {m: r.probabilities.reliability(10) for m, r in result.runs.items() if r.probabilities is not None and r.probabilities.n}
    if not curves:
        return None
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for model, c in curves.items():
        ok = c.counts > 0
        ax.plot(c.mean_predicted[ok], c.observed_rate[ok], marker="o", label=f"{model} (ECE {c.ece:.3f})")
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title="reliability")
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_report(result: EvaluationResult, directory: Path | str, *, title: str = "shelf offline evaluation") -> Path:
    """Write ``report.html`` and the PNG plots into ``directory``; returns the HTML path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    kmax = max(result.ks)
    plots: list[tuple[str, Path]] = []
    for view in result.views:
        for metric in ("ndcg", "recall"):
            plots.append((f"{metric} vs K ({view})", plot_metric_vs_k(result, metric, view, out / f"{metric}_vs_k_{view}.png")))
    if result.user_labels.get("all"):
        plots.append(("by user segment", plot_segments(result, "ndcg", kmax, out / "segments.png")))
    plots.append(("exposure", plot_exposure(result, kmax, out / "exposure.png")))
    calibration = plot_calibration(result, out / "calibration.png")
    if calibration is not None:
        plots.append(("calibration", calibration))
    images = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, p in plots
    )
    groups = []
    for model in result.runs:
        for r in result.item_groups(model, kmax):
            groups.append(f"<tr><td>{html.escape(model)}</td><td>{html.escape(r.kind)}</td><td>{html.escape(r.group)}</td><td>{r.n_items}</td><td>{r.n_relevant}</td><td>{r.recall:.4f}</td><td>{r.exposure_share:.4f}</td></tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}pre{{font-size:12px;overflow-x:auto}}
table{{border-collapse:collapse;font-size:12px}}td,th{{border:1px solid #ccc;padding:2px 6px}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p><b>Split:</b> {html.escape(result.split)}<br><b>Relevant:</b> {html.escape(result.target)}<br>
<b>Catalogue:</b> {result.n_items} items; metrics over the full catalogue, no sampled negatives.</p>
<h2>Metrics</h2><pre>{html.escape(result.table())}</pre>
<h2>Plots</h2>{images}
<h2>Item groups @{kmax} (all)</h2><table><tr><th>model</th><th>kind</th><th>group</th><th>items</th><th>relevant pairs</th><th>recall</th><th>exposure share</th></tr>{"".join(groups)}</table>
</body></html>"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
