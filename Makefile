# Two entry points (README): `make run` and `make test`. Both build .venv on first use
# and reuse it while pyproject.toml and requirements/ are unchanged.
# The tests run in two tiers, each on two processes (a module's tests share one, so its
# fixtures are built once) with the 15 slowest listed:
#   make test       unit and small integration tests (the gate; a few minutes)
#   make test-slow  end-to-end CLI runs, benchmarks, real servers, the wheel install
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST := $(VENV)/bin/pytest -n 2 --dist loadscope --durations=15

.PHONY: run test test-slow lint-imports bench env clean-env

$(STAMP): pyproject.toml requirements/lock.txt requirements/torchrec.txt
	bash scripts/build_env.sh $(VENV)
	touch $(STAMP)

env: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/mtlrec run

test: $(STAMP)
	$(PYTEST)

test-slow: $(STAMP)
	$(PYTEST) -m slow

lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports

clean-env:
	rm -rf $(VENV)
