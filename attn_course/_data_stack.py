"""Run the interpreter's hot loop at the start of a data-stack chunk of its own (CPython 3.11+).

Since Python 3.11 a thread keeps its Python frames on a "data stack" made of chunks of 16 KiB. A call
whose frame does not fit in what is left of the current chunk gets a fresh chunk from ``mmap``; when that
frame returns, the chunk goes back with ``munmap``. So if a function called millions of times happens to
be pushed exactly across a chunk boundary, every one of its calls maps, touches (page faults) and unmaps
fresh memory.

Triton's interpreter is exactly such a loop: it runs every program of the grid, and every ``tl`` operation
of each one, as ordinary Python calls, each a few frames deep. Where the launch sits on the data stack
depends on how deep its caller is: in a script, a pytest worker or a Jupyter cell the same launch lands
at different depths. About one depth in three puts a boundary inside the hot calls, and there the same
launch takes up to four times as long, most of it in the operating system's page-fault handler
(measured with Triton 3.9 on Python 3.11: an ``[1, 2, 65, 64]`` causal forward took 0.2 s at most depths
and up to 0.84 s at the bad ones, with 68,000 minor faults instead of none; under ``pytest -n 2`` the
kernel tests spent a fifth of their CPU time in system time, handling those faults).

:func:`call_on_fresh_chunk` takes the depth out of it: it calls through a frame too big for any 16 KiB
chunk, so that frame always starts a chunk of its own (64 KiB: CPython sizes a chunk to the frame plus
1,000 words of room, rounded up to a power of two times 16 KiB), and everything the call pushes after it
finds about 39 KiB free in that chunk, at the same place whatever the caller's depth. The interpreter's
deepest calls need a few KiB, so they never cross a boundary. Before 3.11 frames are separate objects and
this is merely a harmless extra call; the chunk costs one ``mmap`` per launch.

Two places call through it: ``attn_course.kernels``' interpreter scope runs every interpreted grid of the
course's kernels through it, and the chapter 7 check (``check.triton_forward``) runs each call of a learner's
own kernel through it, since a notebook that sets ``TRITON_INTERPRET`` itself never enters that scope. It is
plain Python, outside the kernels package, so the checks use it without importing Triton.
"""

from __future__ import annotations

# Unused locals make the frame big: a frame holds a slot for each local (8 bytes), and CPython's compiler
# keeps the locals of dead code. 3,200 slots (25 KiB) overflow a 16 KiB chunk, and with CPython's 1,000 words
# of room ask for 64 KiB, leaving about 39 KiB after this frame.
_SLOTS = 3200
_SOURCE = (
    "def call_on_fresh_chunk(fn, /, *args, **kwargs):\n"
    "    if False:  # never runs: only makes the frame big\n"
    f"        {' = '.join(f'_{i}' for i in range(_SLOTS))} = None\n"
    "    return fn(*args, **kwargs)\n"
)
_namespace: dict = {}
exec(compile(_SOURCE, __name__ + " (generated)", "exec"), _namespace)
call_on_fresh_chunk = _namespace["call_on_fresh_chunk"]
call_on_fresh_chunk.__module__ = __name__
call_on_fresh_chunk.__doc__ = (
    "``fn(*args, **kwargs)``, called from a frame that starts a data-stack chunk of its own, so that the calls "
    "``fn`` makes sit at the same place in a chunk whatever the caller's depth (see the module's docstring)."
)
