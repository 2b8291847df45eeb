# The Triton kernels (issue 3). `make bench` runs every part's benchmark; this part's is `bench-kernels`:
# on a CUDA GPU, TFLOP/s of the kernel vs each PyTorch SDPA backend and naive attention; on a CPU, the
# peak memory of naive vs tiled vs kernel attention. Results: benchmarks/results/<device>.json and .png.

.PHONY: bench bench-kernels

## bench: run the benchmarks (results in benchmarks/results/)
bench: bench-kernels

## bench-kernels: the kernels' benchmark (GPU: speed vs SDPA backends; CPU: peak memory as T grows)
bench-kernels: setup
	$(PY) benchmarks/bench_attention.py $(BENCH_ARGS)

.PHONY: gpu-session
## gpu-session: on a GPU machine, the GPU kernel tests and the benchmark as one time-boxed run (benchmarks/gpu_session.sh)
gpu-session: setup
	PYTHON=$(PY) benchmarks/gpu_session.sh
