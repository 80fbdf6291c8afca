# Two entry points (README): `make run` and `make test`. Both build .venv on first use
# and reuse it while pyproject.toml and requirements/ are unchanged.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-slow bench env clean-env

$(STAMP): pyproject.toml requirements/lock.txt requirements/torchrec.txt
	bash scripts/build_env.sh $(VENV)
	touch $(STAMP)

env: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/mtlrec run

test: $(STAMP)
	$(VENV)/bin/pytest

test-slow: $(STAMP)
	$(VENV)/bin/pytest -m slow

clean-env:
	rm -rf $(VENV)
