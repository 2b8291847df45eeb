"""Small helpers the chapters share: figures as inline images and widgets that work in the static book.

A slider in a static HTML page has no Python kernel behind it. The trick used throughout the book: compute
every frame at build time, put the frames in an ``ipywidgets.Stack`` and link the slider to the stack's
``selected_index`` *in the browser* (``jslink``). The saved widget state then holds every frame, and moving
the slider flips between them with no kernel at all. Values in between need a live kernel (run the chapter
as a notebook).

Widgets still need JavaScript. So every widget comes with a static fallback right below it: one image
holding all of its precomputed frames side by side (``<figure class="widget-fallback">``), whose caption
says what only a live kernel can do. book/browser_check.py checks that it is there and loads, with
JavaScript on and off.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import HTML, display
from PIL import Image

plt.rcParams.update({"figure.dpi": 96, "savefig.dpi": 96, "font.size": 10, "axes.titlesize": 10})


LIVE_KERNEL = ("To {live}, you need a live kernel: run this chapter as a notebook "
               "(build/book/jupyter_execute/{page}.ipynb, written by <code>make book</code>).")


def fig_to_png(fig) -> bytes:
    """The figure as PNG bytes (tight bounding box); leaves the figure open."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def fig_to_img(fig, alt: str) -> str:
    """An ``<img>`` tag holding the figure as an inline PNG (no file, so it always loads); closes the figure."""
    data = base64.b64encode(fig_to_png(fig)).decode("ascii")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{data}" alt="{alt}" style="max-width:100%">'


def _frame_png(frame: str) -> Image.Image:
    found = re.search(r'src="data:image/png;base64,([^"]+)"', frame)
    if found is None:
        raise ValueError(f"a frame must hold an inline PNG made by fig_to_img, got {frame[:60]!r}...")
    return Image.open(io.BytesIO(base64.b64decode(found.group(1)))).convert("RGB")


def fallback_sheet(frames: list[str], page: str, live: str, max_width: int = 1100) -> str:
    """One static image of every frame, tiled in a grid, as ``<figure class="widget-fallback">``.

    ``frames`` are ``fig_to_img`` tags; the caption says what needs a live kernel (``live``: "try other
    temperatures") in the chapter ``page``. The tiles are scaled so that the grid is at most ``max_width``
    pixels wide, with up to four tiles a row.
    """
    if not frames:
        raise ValueError("a fallback needs at least one frame")
    tiles = [_frame_png(f) for f in frames]
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * w, rows * h), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * w, (i // cols) * h))
    if sheet.width > max_width:  # (rows*h, cols*w) -> scaled to max_width wide
        sheet = sheet.resize((max_width, round(sheet.height * max_width / sheet.width)), Image.LANCZOS)
    buf = io.BytesIO()
    sheet.save(buf, format="png", optimize=True)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    note = LIVE_KERNEL.format(page=html.escape(page), live=html.escape(live))
    return (f'<figure class="widget-fallback" data-states="{len(tiles)}" style="margin:0.5em 0 1em 0">'
            f'<img src="data:image/png;base64,{data}" alt="all {len(tiles)} states of the widget above" '
            f'style="max-width:100%"><figcaption style="font-size:0.9em;color:#555">'
            f"Static view: all {len(tiles)} precomputed states of the widget above, in reading order. It "
            f"needs no JavaScript, so it shows even where the widget cannot. {note}</figcaption></figure>")


def show_with_fallback(widget, frames: list[str], page: str, live: str):
    """Display ``widget`` and, right below it, the static :func:`fallback_sheet` of its ``frames``;
    returns the widget (a notebook can keep using it)."""
    display(widget)
    display(HTML(fallback_sheet(frames, page, live)))
    return widget


def frame_slider(labels: list[str], frames: list[str], description: str, *, page: str, live: str) -> None:
    """Show a slider over precomputed HTML ``frames`` (one per label), linked in the browser so that it
    also works in the static page, and its static fallback below it (see :func:`fallback_sheet`).
    ``frames[i]`` is shown when the slider points at ``labels[i]``."""
    if len(labels) != len(frames) or not labels:
        raise ValueError(f"need one frame per label, got {len(labels)} labels and {len(frames)} frames")
    slider = widgets.SelectionSlider(options=labels, value=labels[0], description=description,
                                     continuous_update=True, style={"description_width": "initial"},
                                     layout=widgets.Layout(width="520px"))
    stack = widgets.Stack([widgets.HTML(f) for f in frames], selected_index=0)
    widgets.jslink((slider, "index"), (stack, "selected_index"))
    show_with_fallback(widgets.VBox([slider, stack]), frames, page, live)


def frame_buttons(labels: list[str], frames: list[str], description: str = "", *, page: str,
                  live: str) -> None:
    """Like :func:`frame_slider` with toggle buttons: pick one of a few precomputed frames."""
    if len(labels) != len(frames) or not labels:
        raise ValueError(f"need one frame per label, got {len(labels)} labels and {len(frames)} frames")
    buttons = widgets.ToggleButtons(options=labels, value=labels[0], description=description,
                                    style={"button_width": "auto"})
    stack = widgets.Stack([widgets.HTML(f) for f in frames], selected_index=0)
    widgets.jslink((buttons, "index"), (stack, "selected_index"))
    show_with_fallback(widgets.VBox([buttons, stack]), frames, page, live)


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
