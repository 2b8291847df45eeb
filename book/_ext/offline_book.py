"""A small Sphinx extension that keeps the book readable with no network.

* serves build/book/vendor (MathJax, the ipywidgets HTML manager; fetched by book/vendor.sh) as static
  files. It is added here, after Jupyter Book has generated its config, because Jupyter Book would
  otherwise turn every ``.js`` file under a static path into a ``<script>`` tag on every page;
* adds static/mathjax2_compat.js, which lets the widgets' MathJax 2 calls reach MathJax 3;
* drops the scripts that only point at a CDN (sphinx-thebe's launcher, which this book does not use);
* fails the build if any page would still load a script or stylesheet from the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from sphinx.errors import ExtensionError

HERE = Path(__file__).resolve().parent
# book/build.py says where the vendored files are; this default is the same place.
VENDOR = Path(os.environ.get("ATTN_BOOK_VENDOR", HERE.parents[1] / "build" / "book" / "vendor"))
REMOTE = ("http://", "https://", "//")


def _add_vendor(app, config) -> None:
    config.html_static_path = list(config.html_static_path) + [str(VENDOR), str(HERE / "static")]


def _is_remote(asset) -> bool:
    name = getattr(asset, "filename", asset)
    body = str(getattr(asset, "attributes", {}).get("body", ""))
    return (isinstance(name, str) and name.startswith(REMOTE)) or "unpkg.com" in body


def _offline_page(app, pagename, templatename, context, doctree) -> None:
    for key in ("script_files", "css_files"):
        assets = context.get(key, [])
        kept = [a for a in assets if not _is_remote(a) and "sphinx-thebe" not in str(getattr(a, "filename", a))]
        context[key] = kept
        remote = [str(getattr(a, "filename", a)) for a in kept if _is_remote(a)]
        if remote:
            raise ExtensionError(f"page {pagename} would load {remote} from the network; the book must be offline")


def setup(app):
    app.connect("config-inited", _add_vendor)
    app.add_js_file("mathjax2_compat.js", priority=900, defer="defer")
    app.connect("html-page-context", _offline_page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
