"""A small Sphinx extension that runs the book's chapter kernels over private Unix sockets, not TCP.

myst-nb executes each chapter through jupyter-cache, which starts the kernel with nbclient and takes no
traitlets configuration, so the kernel would listen on TCP ports of localhost (any local process may connect;
ipykernel 7 warns once per chapter that the traffic is unencrypted). This extension makes one private folder
(0o700) for the build and, while the build runs, has jupyter-cache's call into nbclient pass a configuration
that puts every kernel's sockets there (``attn_course._kernel_sockets``, which release validation uses too).
Where the folder is too deep for a socket path (a long ``TMPDIR``) the kernels keep TCP, and the log says so.
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
_STATE: dict = {}  # the folder and the function we replaced, while a build runs


def _executor_module():
    from jupyter_cache.executors import utils

    if not callable(getattr(utils, "executenb", None)):
        raise ExtensionError("book/_ext/private_kernels.py: jupyter_cache.executors.utils no longer calls nbclient "
                             "through `executenb`; update this extension for the installed jupyter-cache")
    return utils


def install(app=None) -> Path | None:
    """Route the chapter kernels' sockets into a fresh private folder; return it (None: TCP was kept)."""
    uninstall()
    utils = _executor_module()  # (before making the folder: a failure here leaves nothing behind)
    folder = Path(tempfile.mkdtemp(prefix="attn-book-"))
    config = Config()
    if not use_private_sockets(config, folder):
        shutil.rmtree(folder, ignore_errors=True)
        logger.info(f"private_kernels: {folder} is too deep for a Unix socket path; the kernels use TCP")
        return None
    executenb = utils.executenb

    @functools.wraps(executenb)
    def with_private_sockets(nb, *args, **kwargs):
        kwargs.setdefault("config", config)
        return executenb(nb, *args, **kwargs)

    utils.executenb = with_private_sockets
    _STATE.update(folder=folder, executenb=executenb)
    return folder


def uninstall(app=None, exception=None) -> None:
    """Put jupyter-cache's call back and remove the socket folder (at the end of every build, failed or not)."""
    if "executenb" in _STATE:
        _executor_module().executenb = _STATE.pop("executenb")
    if "folder" in _STATE:
        shutil.rmtree(_STATE.pop("folder"), ignore_errors=True)


def setup(app):
    app.connect("builder-inited", install)
    app.connect("build-finished", uninstall)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
