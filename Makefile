# The two commands of the README; each does all set-up it needs on a fresh machine.
.PHONY: setup demo test

setup:
	bash scripts/setup.sh

demo: setup
	./spark-submit.sh jobs/demo.py --profile local

test: setup
	.venv/bin/python -m pytest
