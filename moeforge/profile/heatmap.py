"""A routing profile drawn as a heatmap: MoE layers × routed experts, one panel per score.

Each cell is the expert's share of its layer in per cent (rows sum to 100), so the experts a
domain leans on stand out as bright cells against the uniform share 100/E. Drawn on matplotlib's
Agg canvas without pyplot, so it needs no display and keeps no global state.
"""

import logging
from pathlib import Path

from moeforge.profile.profile_file import SCORES, RoutingProfile

log = logging.getLogger(__name__)

_TITLES = {
    "token": "token selection ratio (ESFT-Token)",
    "gate": "mean gate score (ESFT-Gate)",
    "saliency": "mean over routed tokens of gate × ‖expert output‖ (REAP saliency)",
}
_MAX_LABELLED_EXPERTS = 64  # above this, expert ticks are thinned so labels stay legible
_MAX_ANNOTATED_CELLS = 200  # up to this many cells, each shows its share in per cent


def plot_profile(profile: RoutingProfile, path: str | Path, *, title: str | None = None) -> Path:
    """Write the heatmap PNG of every score the profile holds; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy; only when drawing
    from matplotlib.figure import Figure

    scores = [s for s in SCORES if getattr(profile, s) is not None]
    n_layers, n_experts = len(profile.layers), profile.num_experts
    width = min(22.0, max(7.0, 2.5 + 0.16 * n_experts))
    height = len(scores) * min(9.0, max(2.2, 0.9 + 0.28 * n_layers)) + 0.9
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(scores), 1, squeeze=False)[:, 0]
    for ax, score in zip(axes, scores):
        values = [[100 * v for v in profile.scores(score)[layer]] for layer in profile.layers]  # per cent
        image = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0)
        if n_layers * n_experts <= _MAX_ANNOTATED_CELLS:
            _annotate(ax, values, image)
        ax.set_title(_TITLES[score], fontsize=10, loc="left")
        ax.set_ylabel("MoE layer")
        ax.set_yticks(range(n_layers), [str(layer) for layer in profile.layers])
        step = max(1, -(-n_experts // _MAX_LABELLED_EXPERTS))
        ax.set_xticks(range(0, n_experts, step))
        ax.tick_params(axis="x", labelsize=8 if n_experts > 32 else 9)
        colour_bar = figure.colorbar(image, ax=ax, pad=0.01)
        colour_bar.set_label(f"% of the layer\n(uniform: {100 / n_experts:.3g}%)", fontsize=8)
    axes[-1].set_xlabel("routed expert")
    default_title = f"{profile.model_type}: routing of {profile.tokens:,} tokens (top-{profile.top_k} of {n_experts})"
    figure.suptitle(title or default_title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    log.info("wrote routing heatmap to %s", path)
    return path


def _annotate(ax, values: list[list[float]], image) -> None:
    """Each cell's value (per cent), dark on bright cells and light on dark ones."""
    for row, shares in enumerate(values):
        for column, share in enumerate(shares):
            colour = "black" if sum(image.cmap(image.norm(share))[:3]) > 1.5 else "white"
            ax.text(column, row, f"{share:.0f}", ha="center", va="center", fontsize=8, color=colour)
