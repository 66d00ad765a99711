# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
# the install stamp is named by the hash of pyproject.toml's content: nbdev-export rewrites the file (same bytes, new
# mtime), which must not trigger a reinstall
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test outputs
install: $(STAMP)

$(STAMP):
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed*
	touch $(STAMP)

demo: install
	$(VPY) scripts/demo.py

test: install
	$(VPY) scripts/run_tests.py

# re-execute every notebook (or just NB=nbs/23_study.ipynb ...) in a real kernel (slow cells off) and keep its outputs,
# then strip metadata (nbdev-clean)
outputs: install
	$(VPY) scripts/run_tests.py --outputs $(NB)
	$(VENV)/bin/nbdev-clean
