# The trusted autograder (autograder/grading): `make autograde` and the grading benchmark.
#   make autograde SUBMISSIONS=<dir> [WORKERS=N] [DB_URL=postgresql://...]
# grades <dir>/<student_id>/<assignment>/<assignment>.ipynb in the sandbox and writes the gradebook,
# build/grades/feedback/<student_id>/<assignment>/<assignment>.html, build/grades/grades.csv and
# build/grades/report.{json,txt}. Rerunning grades only new or changed submissions; an interrupted run resumes.

# The PostgreSQL gradebook test starts its own server from Debian's postgresql.
APT_PACKAGES += postgresql

SUBMISSIONS ?=
WORKERS     ?= $(shell nproc 2>/dev/null || echo 1)
DB_URL      ?=

.PHONY: autograde bench-grading

## autograde: grade SUBMISSIONS=<dir> (<student_id>/<assignment>/*.ipynb) into build/grades/ (WORKERS=N, DB_URL=...)
autograde: setup
	@if [ -z "$(SUBMISSIONS)" ]; then \
	  echo "usage: make autograde SUBMISSIONS=<dir> [WORKERS=N] [DB_URL=postgresql://...]" >&2; exit 2; fi
	$(PY) -m autograder.grading "$(SUBMISSIONS)" --workers $(WORKERS) $(if $(DB_URL),--db-url '$(DB_URL)')

## bench-grading: time autograding on this machine (one student's seven notebooks; 100 submissions, 1 and 2 workers)
bench-grading: setup
	$(PY) benchmarks/bench_grading.py

bench: bench-grading
