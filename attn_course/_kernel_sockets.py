"""Private Unix sockets for the notebook kernels this project starts itself (release validation, the book).

jupyter_client starts a kernel on TCP ports of localhost by default, which any process on the machine may
connect to, and ipykernel 7 warns once per kernel that the traffic is unencrypted. Over the "ipc" transport
the kernel's five channels are socket files named ``<ip>-<n>``; in a folder that only we may enter
(``tempfile`` makes its folders 0o700), no other user can reach them.

    config = traitlets.config.Config()
    with tempfile.TemporaryDirectory(prefix="attn-") as folder:
        use_private_sockets(config, Path(folder))   # then start the kernels with config=config
"""

from __future__ import annotations

import os
from pathlib import Path

# A Unix socket's path must fit in 108 bytes (Linux's sun_path, with its terminating NUL); jupyter_client names
# a kernel's sockets "<ip>-<n>", n a small number.
SOCKET_PATH_BYTES = 107 - len("-65535")


def use_private_sockets(config, folder: Path) -> bool:
    """Have the kernels started with traitlets ``config`` talk over Unix sockets in ``folder`` (which the
    caller made private), not over TCP ports on localhost. False, leaving TCP, when ``folder`` is too deep for
    a socket path (a long ``TMPDIR``): a socket the kernel cannot bind would fail the whole run."""
    ip = folder / "kernel"
    if len(os.fsencode(ip)) > SOCKET_PATH_BYTES:
        return False
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = str(ip)
    return True
