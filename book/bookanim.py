"""Animations for the static book, drawn by code at build time and embedded in the page itself.

Two ways to embed a matplotlib animation so that it plays in an offline HTML page:

* :func:`gif` writes the frames as an animated GIF with matplotlib's Pillow writer and shows it as an
  ``<img>`` holding the GIF inline. It needs no JavaScript at all, but the reader cannot pause it.
* :func:`player` uses ``FuncAnimation.to_jshtml``: every frame is an inline PNG, and a small script (shipped
  inside the page) gives play / pause / step buttons and a slider. matplotlib's template takes its button
  icons from a font on a CDN; we drop that link and write the buttons as plain text, so nothing is fetched.

Both wrap their output in ``<div class="book-animation" data-kind=... data-frames=N>``, which is what
book/browser_check.py looks for when it checks that every animation loaded with all its frames.
"""

from __future__ import annotations

import base64
import re
import tempfile
from pathlib import Path

from bookhelpers import fig_to_png
from matplotlib import animation
from matplotlib import pyplot as plt

# matplotlib's icon class -> the text its button shows here (no icon font, so no CDN)
BUTTON_TEXT = {
    "fa-minus": "slower", "fa-fast-backward": "first", "fa-step-backward": "&#9664;|",
    "fa-play fa-flip-horizontal": "&#9664;", "fa-pause": "pause", "fa-play": "&#9654;",
    "fa-step-forward": "|&#9654;", "fa-fast-forward": "last", "fa-plus": "faster",
}
STYLE = "display:block;margin:0.5em 0 1em 0"


def _check(n_frames: int, interval_ms: int) -> None:
    if not isinstance(n_frames, int) or n_frames < 2:
        raise ValueError(f"an animation needs at least 2 frames, got n_frames={n_frames!r}")
    if interval_ms <= 0:
        raise ValueError(f"interval_ms is the time between frames and must be positive, got {interval_ms}")


def _wrap(kind: str, n_frames: int, body: str, caption: str) -> str:
    return (f'<div class="book-animation" data-kind="{kind}" data-frames="{n_frames}" style="{STYLE}">'
            f'{body}<div style="font-size:0.9em;color:#555">{caption}</div></div>')


def gif(fig, draw, n_frames: int, alt: str, caption: str, interval_ms: int = 250) -> str:
    """An animated GIF of ``draw(i)`` for ``i`` in ``range(n_frames)`` on ``fig``, as an inline ``<img>``.

    ``draw(i)`` redraws the figure for frame ``i`` (clear the axes and draw again). The GIF loops forever
    and plays with JavaScript switched off. Closes the figure.
    """
    _check(n_frames, interval_ms)
    anim = animation.FuncAnimation(fig, draw, frames=n_frames, interval=interval_ms, repeat=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "anim.gif"
        anim.save(path, writer=animation.PillowWriter(fps=1000 / interval_ms))
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    plt.close(fig)
    img = f'<img src="data:image/gif;base64,{data}" alt="{alt}" style="max-width:100%">'
    return _wrap("gif", n_frames, img, caption)


def player(fig, draw, n_frames: int, alt: str, caption: str, interval_ms: int = 700) -> str:
    """``draw(i)`` for each frame as a steppable player (``to_jshtml``) that works offline.

    The last frame is also kept as a plain image inside ``<noscript>``, for a reader with no JavaScript.
    Closes the figure.
    """
    _check(n_frames, interval_ms)
    anim = animation.FuncAnimation(fig, draw, frames=n_frames, interval=interval_ms, repeat=False)
    html = anim.to_jshtml(default_mode="once")
    draw(n_frames - 1)
    still = base64.b64encode(fig_to_png(fig)).decode("ascii")
    plt.close(fig)
    html, removed = re.subn(r"<link[^>]*font-awesome[^>]*>", "", html)
    if removed != 1:
        raise RuntimeError("matplotlib's to_jshtml template changed: its icon-font link was not found")
    for icon, text in BUTTON_TEXT.items():
        html = html.replace(f'<i class="fa {icon}"></i>', text)
    html = html.replace('<button title=', '<button style="width:auto;padding:0 6px" title=')
    html = html.replace('<img id="_anim_img', f'<img alt="{alt}" id="_anim_img')
    if "fa fa-" in html or re.search(r"https?://", html):
        raise RuntimeError("the animation player still refers to an icon font or a URL; the book is offline")
    noscript = f'<noscript><img src="data:image/png;base64,{still}" alt="{alt} (last frame)"></noscript>'
    return _wrap("player", n_frames, html + noscript, caption)
