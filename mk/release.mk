# The instructor release (issue 5). `make release` proves the exercise sources and ships them:
#   nbgrader generate_assignment for every assignment (build/course/), validate (solutions pass every test),
#   validate --invert (student versions fail every test), leak check (no solution or hidden-test line in any
#   shipped file), then build/release/<assignment>/<assignment>.ipynb, build/release/<assignment>.zip and
#   build/release/book/ (a copy of build/book/html). A failing step publishes nothing.
# mk/book.mk sorts before this file, so MAIN_JOBS already names `book` here when the book part is present.
MAIN_JOBS += release
RELEASE_BOOK := $(filter book,$(MAIN_JOBS))

.PHONY: release release-notebooks course leakcheck

## release: validate the exercises, leak-check, and ship build/release/ (notebooks, zips, the built book)
release: setup $(RELEASE_BOOK)
	$(PY) -m autograder.release $(if $(RELEASE_BOOK),--book build/book/html,--no-book)

## release-notebooks: the same release without the book (quicker; build/release/ then has no book/)
release-notebooks: setup
	$(PY) -m autograder.release --no-book

## course: (re)build the nbgrader course directory build/course/ and its gradebook from solutions/
course: setup
	$(PY) -m autograder.course build/course

## leakcheck: check build/release/ (and build/book/html if built) for solution or hidden-test lines
leakcheck: setup
	$(PY) -m autograder.leakcheck build/release $(wildcard build/book/html)
