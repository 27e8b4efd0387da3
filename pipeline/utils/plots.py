"""Report figures: two panels side by side, drawn off-screen (Agg) and saved as PNG."""

from __future__ import annotations

from pathlib import Path


def two_panels():
    """(figure, (left axes, right axes)) on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, 2, figsize=(12, 4.5))


def save(fig, axes, path: Path) -> Path:
    """Grid and legend on every panel, then write ``path`` and free the figure."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
