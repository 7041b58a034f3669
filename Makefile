# Two set-up commands (see README): `make test` and `make demo`. Both set up everything on a fresh machine.
# bash, not /bin/sh: `lint` sources scripts/setup_env.sh, a bash script (pipefail, BASH_SOURCE).
SHELL := /bin/bash
.PHONY: test demo lint setup

test:
	@bash scripts/test.sh

demo:
	@bash scripts/demo.sh

setup:
	@bash scripts/setup_env.sh

lint:
	@. scripts/setup_env.sh && "$$MOCHI_VENV/bin/ruff" check . && "$$MOCHI_VENV/bin/ruff" format --check .
