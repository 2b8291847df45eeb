"""Counting what a call costs at each depth of its caller on Python's data stack (see attn_course/_data_stack.py),
shared by the kernel tests and the exercise tests (which import it in a fresh process, too)."""

from __future__ import annotations

import resource


def minor_faults_at_depths(launch, depths) -> list[int]:
    """The minor page faults of ``launch()`` called ``n`` frames deeper than here, for each ``n`` of ``depths``."""

    def deeper(n):
        return launch() if n == 0 else deeper(n - 1)

    faults = []
    for n in depths:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        deeper(n)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults
