"""Trusted-verdict spec of ch7_flash: one entry per autograded test cell of the source notebook.

``triton_forward`` is the notebook's given wrapper around the learner's kernel: calling it runs the learner's
``flash_forward_kernel`` (on the GPU when present, else in the Triton interpreter on small shapes).
"""

GRADED = {
    "test_ch7_online": {"points": 3.0, "checks": [["online_softmax", "online_softmax"]]},
    "test_ch7_tiled": {"points": 5.0, "checks": [["tiled_forward", "tiled_forward"]]},
    "test_ch7_triton": {"points": 4.0, "checks": [["triton_forward", "triton_forward"]]},
}
