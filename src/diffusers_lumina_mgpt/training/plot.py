"""`lumina-mgpt plot`: a run's loss curves, one colour per stage, to a PNG (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path

from .checkpoints import read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None, smooth: int = 20) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ValueError("lumina-mgpt plot needs matplotlib: pip install matplotlib") from err
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl is empty; nothing to plot yet")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    stages: dict[str, list[dict]] = {}
    for r in rows:
        stages.setdefault(str(r.get("stage")), []).append(r)
    for name, part in stages.items():
        steps = [r["step"] for r in part]
        loss = [r["loss"] for r in part]
        ax.plot(steps, loss, alpha=0.25, linewidth=0.8)
        k = max(1, min(smooth, len(loss) // 5 or 1))
        avg = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
        ax.plot(steps, avg, color=ax.lines[-1].get_color(), label=f"{name} (mean of {k})")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (CE + z-loss per supervised token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(Path(run_dir).name)
    path = Path(out) if out else Path(run_dir) / "loss.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
