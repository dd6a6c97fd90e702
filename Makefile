# gpu.mig — two entry points: `make demo` and `make test`. Both bootstrap .venv when missing.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
COLL := .build/collections
COLL_LINK := $(COLL)/ansible_collections/gpu/mig
TESTCOPY := .build/test/ansible_collections/gpu/mig
export PYTHONPATH := $(CURDIR)/$(COLL)
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/$(COLL)
export ANSIBLE_LOCAL_TEMP := $(CURDIR)/.build/ansible-tmp
export ANSIBLE_REMOTE_TMP := $(CURDIR)/.build/ansible-tmp
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test venv collection unit sanity ansible-units lint molecule benchmarks changelog clean

$(BIN)/ansible: requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv: $(BIN)/ansible

collection: venv
	@mkdir -p $(dir $(COLL_LINK)) .build/ansible-tmp
	@ln -sfn $(CURDIR) $(COLL_LINK)

demo: collection
	$(BIN)/python tests/simulator/migsim fleet --dir .build/demo-fleet --force --hosts 6
	$(BIN)/ansible-playbook -i .build/demo-fleet/inventory.yml playbooks/demo_facts.yml

test: unit sanity ansible-units lint molecule

unit: collection
	$(BIN)/pytest -q -n 2 tests/unit

# ansible-test needs the tree under ansible_collections/<ns>/<name>: sync a copy of the tracked files.
$(TESTCOPY): collection
	@mkdir -p $(TESTCOPY)
	@git ls-files -co --exclude-standard -z | rsync -a --delete --from0 --files-from=- ./ $(TESTCOPY)/
	@rm -rf $(TESTCOPY)/.git && cp -a .git $(TESTCOPY)/.git

sanity: $(TESTCOPY)
	cd $(TESTCOPY) && $(CURDIR)/$(BIN)/ansible-test sanity --python 3.11 --local --color no

ansible-units: $(TESTCOPY)
	cd $(TESTCOPY) && $(CURDIR)/$(BIN)/ansible-test units --python 3.11 --local --color no

lint: collection
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/ansible-lint

molecule: collection
	$(BIN)/molecule test --all

benchmarks: collection
	$(BIN)/python benchmarks/facts_overhead.py

changelog: venv
	$(BIN)/antsibull-changelog lint

clean:
	rm -rf .build tests/output
