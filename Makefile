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

# a new .venv needs about 6 GB (torch 2.14.1 is a CUDA build) plus pip's unpacking room: refuse early, with the numbers
MIN_FREE_GB ?= 8

$(STAMP):
	@test -x $(VPY) || { free=$$(df -Pk . | awk 'NR == 2 {print int($$4 / 1048576)}'); if [ "$$free" -lt $(MIN_FREE_GB) ]; then \
	  echo "make: only $$free GB free on this disk; installing .venv needs about $(MIN_FREE_GB) GB (torch 2.14.1 is a 5.5 GB CUDA build). Free some space and run make again."; exit 1; fi; }
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
