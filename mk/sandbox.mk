# The sandbox that runs learner submissions (autograder/sandbox/): bubblewrap, plus setpriv (util-linux,
# essential on Debian) to drop root to an unprivileged uid inside it.
APT_PACKAGES += bubblewrap

.PHONY: sandbox-check

## sandbox-check: fail, naming the missing tool, when the grading sandbox (bubblewrap's `bwrap`) is unavailable
sandbox-check:
	@command -v bwrap >/dev/null 2>&1 || { \
	  echo "error: bubblewrap ('bwrap') is not installed; autograding runs every submission in it and refuses to"; \
	  echo "       run learner code without it. Install it with 'sudo apt-get install bubblewrap' (or run 'make setup'"; \
	  echo "       as root, which installs it)."; exit 1; }
	@if [ "$$(id -u)" = 0 ]; then command -v setpriv >/dev/null 2>&1 || { \
	  echo "error: 'setpriv' (Debian package util-linux) is missing: as root the sandbox needs it to drop to an"; \
	  echo "       unprivileged uid. Install it with 'apt-get install util-linux'."; exit 1; }; fi

# grading needs the sandbox: check for it first
autograde: sandbox-check
