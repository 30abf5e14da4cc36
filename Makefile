# The two set-up commands (README): `make run` (default job) and `make test` (whole test suite).
# Both create/refresh the local venv first (idempotent).
.PHONY: setup run test
setup:
	bash scripts/setup.sh
run: setup
	.venv/bin/bench
test: setup
	.venv/bin/python -m pytest -q
