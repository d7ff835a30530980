# The two commands of the README; each does all set-up it needs on a fresh machine.
.PHONY: setup browser demo test

setup:
	bash scripts/setup.sh

# Headless Chromium for the report's browser test (Debian packages; installed only when missing).
browser:
	bash scripts/setup_browser.sh

demo: setup
	./spark-submit.sh jobs/demo.py --profile local

test: setup browser
	.venv/bin/python -m pytest
