# The two commands a newcomer needs: `make run` starts the shop, `make test` runs every test.
.PHONY: run test setup

run:
	@bash scripts/setup.sh run
	@.venv/bin/python -m devservers.launcher

test:
	@bash scripts/setup.sh test
	@bash scripts/test.sh

setup:
	@bash scripts/setup.sh test
