"""Run untrusted learner notebooks in a bubblewrap sandbox and bring back their functions' outputs as data.

    from autograder.sandbox import run_submission, Limits, SandboxResult

See :mod:`.run` for the call, :mod:`.bwrap` for what the sandbox can see, :mod:`.limits` for the limits
(:mod:`.cgroup` for those of the whole sandbox),
:mod:`.notebook` for which cells run, :mod:`.runner` for what happens inside and :mod:`.records` for how the
results are read back safely.
"""

from .bwrap import SandboxUnavailable
from .limits import Limits
from .notebook import Rejected
from .run import OUTCOMES, SandboxResult, run_submission

__all__ = ["run_submission", "Limits", "SandboxResult", "SandboxUnavailable", "Rejected", "OUTCOMES"]
