"""Plots of plans and sweeps (matplotlib, an optional extra: ``pip install 'ompq_ext[plot]'``): the bits per
layer with their parameter counts, OMPQ's orthogonality (ORM) heatmap, and a sweep's size-against-quality
front. Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

from .errors import OmpqError, OmpqValueError
from .record import Plan


def _figure(**options):
    """A matplotlib Figure drawn on its own Agg canvas: no pyplot, so the user's backend and pyplot's list of
    open figures are left alone."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise OmpqError("plotting needs matplotlib, which is not installed: pip install 'ompq_ext[plot]' "
                        "(or pip install matplotlib)") from None
    fig = Figure(**options)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise OmpqValueError(f"cannot write the plot {str(path)!r}: its folder does not exist")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def bits_per_layer(plan: Plan, path) -> Path:
    """Bars of each planned layer's bits, in execution order, over its parameter count (log scale)."""
    layers = plan.layers
    n = len(layers)
    fig = _figure(figsize=(max(6.0, 0.28 * n + 2), 5.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    colors = ["tab:gray" if x.fixed else "tab:blue" for x in layers]
    top.bar(range(n), [x.bits for x in layers], color=colors)
    top.set_ylabel("weight bits")
    top.set_yticks(range(0, max(x.bits for x in layers) + 1))
    top.set_title(f"{plan.model.class_name}: {plan.totals.avg_bits:.3f} bits per weight, "
                  f"{plan.totals.size_mib:.4f} MiB ({plan.settings.method})"
                  + ("; gray: fixed bits" if any(x.fixed for x in layers) else ""), fontsize=10)
    bottom.bar(range(n), [x.params for x in layers], color="tab:orange")
    bottom.set_yscale("log")
    bottom.set_ylabel("weights")
    bottom.set_xticks(range(n), [x.name for x in layers], rotation=70, ha="right", fontsize=7)
    return _save(fig, path)


def orm_heatmap(plan: Plan, path) -> Path:
    """OMPQ's L x L orthogonality matrix (layers in execution order)."""
    if plan.orm is None:
        raise OmpqValueError(f"this plan has no ORM matrix: only method='ompq' records one (this one was "
                             f"made by {plan.settings.method!r})")
    names = plan.layer_names
    n = len(names)
    side = max(4.5, 0.22 * n + 2.5)
    fig = _figure(figsize=(side + 1, side))
    ax = fig.subplots()
    image = ax.imshow(plan.orm, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="ORM (1: same features)")
    ticks = range(n) if n <= 60 else range(0, n, max(1, n // 30))
    ax.set_xticks(list(ticks), [names[i] for i in ticks], rotation=90, fontsize=6)
    ax.set_yticks(list(ticks), [names[i] for i in ticks], fontsize=6)
    ax.set_title("orthogonality between layers' features", fontsize=10)
    return _save(fig, path)


def pareto(sweep, path) -> Path:
    """A sweep's plans against uniform precision: size against objective (where the plans' objectives compare)
    and against the measured metric (where one was measured)."""
    panels = [("objective", lambda p: p.objective)] if sweep.comparable or sweep.metric_name is None else []
    if sweep.metric_name is not None:
        panels.append((sweep.metric_name, lambda p: p.metric))
    fig = _figure(figsize=(6.0 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, value) in zip(axes[0], panels):
        for group, style, label in ((sweep.points, dict(color="tab:blue", marker="o", ls="-"),
                                     sweep.plans[0].settings.method),
                                    (sweep.references, dict(color="tab:gray", marker="s", ls="--"), "uniform")):
            shown = sorted((p for p in group if value(p) is not None), key=lambda p: p.size_mib)
            if not shown:
                continue
            ax.plot([p.size_mib for p in shown], [value(p) for p in shown], label=label, **style)
            for p in shown:  # the plans' labels above their points, the references' below
                text = p.label.replace("uniform ", "W").replace(" bits", "")
                ax.annotate(text, (p.size_mib, value(p)), textcoords="offset points",
                            xytext=(4, -11 if p.uniform else 5), fontsize=7)
        ax.set_xlabel("model size (MiB)")
        ax.set_ylabel(name if name != "objective" or sweep.comparable else "objective (each plan's own scores)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{sweep.plans[0].model.class_name}: {len(sweep.points)} budgets", fontsize=10)
    return _save(fig, path)


def report_plots(plan: Plan, directory) -> list[Path]:
    """Every plot of one plan into ``directory`` (created): bits.png, and orm.png where the plan has an ORM."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = [bits_per_layer(plan, directory / "bits.png")]
    if plan.orm is not None:
        out.append(orm_heatmap(plan, directory / "orm.png"))
    return out
