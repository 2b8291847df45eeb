"""Small helpers the chapters share: figures as inline images and widgets that work in the static book.

A slider in a static HTML page has no Python kernel behind it. The trick used throughout the book: compute
every frame at build time, put the frames in an ``ipywidgets.Stack`` and link the slider to the stack's
``selected_index`` *in the browser* (``jslink``). The saved widget state then holds every frame, and moving
the slider flips between them with no kernel at all. Values in between need a live kernel (run the chapter
as a notebook); each page says so where it matters.
"""

from __future__ import annotations

import base64
import io

import ipywidgets as widgets
import matplotlib.pyplot as plt

plt.rcParams.update({"figure.dpi": 96, "savefig.dpi": 96, "font.size": 10, "axes.titlesize": 10})


def fig_to_img(fig, alt: str) -> str:
    """An ``<img>`` tag holding the figure as an inline PNG (no file, so it always loads); closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{alt}" style="max-width:100%">'


def frame_slider(labels: list[str], frames: list[str], description: str) -> widgets.VBox:
    """A slider over precomputed HTML ``frames`` (one per label), linked in the browser so that it also
    works in the static page. ``frames[i]`` is shown when the slider points at ``labels[i]``."""
    if len(labels) != len(frames) or not labels:
        raise ValueError(f"need one frame per label, got {len(labels)} labels and {len(frames)} frames")
    slider = widgets.SelectionSlider(options=labels, value=labels[0], description=description,
                                     continuous_update=True, style={"description_width": "initial"},
                                     layout=widgets.Layout(width="520px"))
    stack = widgets.Stack([widgets.HTML(f) for f in frames], selected_index=0)
    widgets.jslink((slider, "index"), (stack, "selected_index"))
    return widgets.VBox([slider, stack])


def frame_buttons(labels: list[str], frames: list[str], description: str = "") -> widgets.VBox:
    """Like :func:`frame_slider` with toggle buttons: pick one of a few precomputed frames."""
    if len(labels) != len(frames) or not labels:
        raise ValueError(f"need one frame per label, got {len(labels)} labels and {len(frames)} frames")
    buttons = widgets.ToggleButtons(options=labels, value=labels[0], description=description,
                                    style={"button_width": "auto"})
    stack = widgets.Stack([widgets.HTML(f) for f in frames], selected_index=0)
    widgets.jslink((buttons, "index"), (stack, "selected_index"))
    return widgets.VBox([buttons, stack])


def heatmap(ax, weights, xlabels=None, ylabels=None, title: str = "", annotate: bool = True, cmap="Blues"):
    """Draw a ``[T_q, T_k]`` weight matrix with rows = queries, columns = keys, values printed in cells."""
    w = weights.detach().float().cpu().numpy() if hasattr(weights, "detach") else weights
    ax.imshow(w, cmap=cmap, vmin=0, vmax=max(1e-9, float(w.max())))
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)), xlabels, rotation=60, ha="right")
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)), ylabels)
    if annotate:
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if w[i, j] > 0.6 * w.max() else "black")
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    return ax


def mask_grid(ax, mask, title: str = ""):
    """Draw a boolean ``[T_q, T_k]`` mask: filled = may attend."""
    m = mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask
    ax.imshow(m, cmap="Greens", vmin=0, vmax=1.3)
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    ax.tick_params(labelsize=6)
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
    ax.set_title(title)
    return ax
