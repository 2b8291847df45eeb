# The Triton kernels (issue 3). `make bench` runs every part's benchmark; this part's is `bench-kernels`:
# on a CUDA GPU, TFLOP/s of the kernel vs each PyTorch SDPA backend and naive attention; on a CPU, the
# peak memory of naive vs tiled vs kernel attention. Results: benchmarks/results/<device>.json and .png.

.PHONY: bench bench-kernels

## bench: run the benchmarks (results in benchmarks/results/)
bench: bench-kernels

## bench-kernels: the kernels' benchmark (GPU: speed vs SDPA backends; CPU: peak memory as T grows)
bench-kernels: setup
	$(PY) benchmarks/bench_attention.py $(BENCH_ARGS)

.PHONY: sweep
## sweep: the kernels' seeded random cases, SWEEP (25) times as many as make test draws (2,557 cases, about 15 minutes on 2 cores), after skipping SWEEP_FROM (0) times as many
SWEEP ?= 25
SWEEP_FROM ?= 0
sweep: setup
	ATTN_COURSE_SWEEP=$(SWEEP) ATTN_COURSE_SWEEP_FROM=$(SWEEP_FROM) $(BIN)/pytest -q -n 2 tests/test_kernels_random.py

.PHONY: gpu-session
## gpu-session: on a GPU machine, the GPU kernel tests and the benchmark as one time-boxed run (benchmarks/gpu_session.sh)
gpu-session: setup
	PYTHON=$(PY) benchmarks/gpu_session.sh

# The register survey is kept for two compilers: this .venv's triton, and triton 3.6, which the GPU machines
# run (registers come from the ptxas each triton wheel ships). The second needs only triton 3.6 and its
# numpy beside the CPU torch: a small venv of its own.
SURVEY36_VENV  ?= .venv-triton3.6
SURVEY36_SPECS ?= "$(TORCH_SPEC)" triton==3.6.0 numpy==2.3.5

.PHONY: survey
## survey: compile every autotuning config for sm_90 under both tritons (3.9 here, 3.6 as on the GPUs) and record registers and spills in benchmarks/results/kernel_resources_sm90*.json, and every pointer tile for sm_80 and sm_120 (the forward's on a paged cache too) with the shared memory, registers and spill each needs, and sm_120's TMA tiles beside them, in kernel_shared_memory*.json (about 205 minutes on 2 cores from a cold Triton cache)
survey: setup $(SURVEY36_VENV)/.installed
	$(PY) benchmarks/kernel_resources.py
	PYTHONPATH=$(CURDIR) $(SURVEY36_VENV)/bin/python benchmarks/kernel_resources.py \
		--out benchmarks/results/kernel_resources_sm90_triton3.6.json
	$(PY) benchmarks/kernel_shared_memory.py
	PYTHONPATH=$(CURDIR) $(SURVEY36_VENV)/bin/python benchmarks/kernel_shared_memory.py \
		--out benchmarks/results/kernel_shared_memory_triton3.6.json

$(SURVEY36_VENV)/.installed: pyproject.toml mk/kernels.mk
	@test -x $(SURVEY36_VENV)/bin/python || $(PYTHON) -m venv $(SURVEY36_VENV)
	@set -o pipefail; $(SURVEY36_VENV)/bin/python -m pip install --quiet $(SURVEY36_SPECS) 2>&1 \
		| { grep -v 'is ignored: it is neither a file' || true; }
	@touch $@
