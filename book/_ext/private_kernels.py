"""A small Sphinx extension that runs the book's chapter kernels over private Unix sockets, not TCP.

myst-nb starts each chapter's kernel with nbclient and no traitlets configuration, so the kernel would
listen on TCP ports of localhost (any local process may connect; ipykernel 7 warns once per chapter that the
traffic is unencrypted). It builds its nbclient client in one of two places, by execution mode: jupyter-cache's
``executenb`` (``cache``, the book's mode) or myst-nb's own client class (``inline``). This extension makes
one private folder (0o700) for the build and, while the build runs, has both pass a configuration that puts
every kernel's sockets there (``attn_course._kernel_sockets``, which release validation uses too). Where the
folder is too deep for a socket path (a long ``TMPDIR``) the kernels keep TCP, and the log says so.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

from sphinx.errors import ExtensionError
from sphinx.util import logging
from traitlets.config import Config

from attn_course._kernel_sockets import use_private_sockets

logger = logging.getLogger(__name__)
_STATE: dict = {}  # the folder, and each (module, name, original) we replaced, while a build runs


def _call_sites() -> list[tuple]:
    """``(module, name)`` of each callable that builds myst-nb's nbclient client, by execution mode."""
    from jupyter_cache.executors import utils  # mode "cache": jupyter-cache calls nbclient's execute
    from myst_nb.core.execute import inline  # mode "inline": myst-nb makes its own NotebookClient

    sites = [(utils, "executenb"), (inline, "ModifiedNotebookClient")]
    for module, name in sites:
        if not callable(getattr(module, name, None)):
            raise ExtensionError(f"book/_ext/private_kernels.py: {module.__name__} no longer starts kernels "
                                 f"through `{name}`; update this extension for the installed myst-nb/jupyter-cache")
    return sites


def _with_config(original, config):
    """``original`` (a function or a class), called with ``config=config`` unless the caller passed one."""

    @functools.wraps(original, updated=())
    def with_private_sockets(*args, **kwargs):
        kwargs.setdefault("config", config)
        return original(*args, **kwargs)

    return with_private_sockets


def install(app=None) -> Path | None:
    """Route the chapter kernels' sockets into a fresh private folder; return it (None: TCP was kept)."""
    uninstall()
    sites = _call_sites()  # (before making the folder: a failure here leaves nothing behind)
    folder = Path(tempfile.mkdtemp(prefix="attn-book-"))
    config = Config()
    if not use_private_sockets(config, folder):
        shutil.rmtree(folder, ignore_errors=True)
        logger.info(f"private_kernels: {folder} is too deep for a Unix socket path; the kernels use TCP")
        return None
    _STATE.update(folder=folder, replaced=[(module, name, getattr(module, name)) for module, name in sites])
    for module, name, original in _STATE["replaced"]:
        setattr(module, name, _with_config(original, config))
    return folder


def uninstall(app=None, exception=None) -> None:
    """Put myst-nb's and jupyter-cache's calls back and remove the socket folder (at the end of every build,
    failed or not)."""
    for module, name, original in _STATE.pop("replaced", []):
        setattr(module, name, original)
    if "folder" in _STATE:
        shutil.rmtree(_STATE.pop("folder"), ignore_errors=True)


def setup(app):
    app.connect("builder-inited", install)
    app.connect("build-finished", uninstall)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
