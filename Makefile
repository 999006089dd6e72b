# The two commands a newcomer needs: `make run` starts the shop, `make test` runs every test.
# `make test-fast` is the everyday lane: lint, types, import contracts, and the tests that need no
# browser, no PostgreSQL and no worker processes (under a minute).
.PHONY: run test test-fast setup

run:
	@bash scripts/setup.sh run
	@.venv/bin/python -m devservers.launcher

test:
	@bash scripts/setup.sh test
	@bash scripts/test.sh

test-fast:
	@bash scripts/setup.sh run
	@bash scripts/test-fast.sh

setup:
	@bash scripts/setup.sh test
