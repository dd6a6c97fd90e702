# gpu.mig — two entry points: `make demo` and `make test`. Both bootstrap .venv when missing.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
COLL := .build/collections
COLL_LINK := $(COLL)/ansible_collections/gpu/mig
TESTCOPY := .build/test/ansible_collections/gpu/mig
ANSIBLE_PACKAGE := ansible==11.13.0
KUBERNETES_CORE := $(COLL)/ansible_collections/kubernetes/core
export PYTHONPATH := $(CURDIR)/$(COLL)
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/$(COLL)
export ANSIBLE_LOCAL_TEMP := $(CURDIR)/.build/ansible-tmp
export ANSIBLE_REMOTE_TMP := $(CURDIR)/.build/ansible-tmp
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test venv collection unit sanity ansible-units capacity-tests e2e-tests playbook-tests lint importer quadlet molecule molecule-systemd benchmarks clean

$(BIN)/ansible: requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv: $(BIN)/ansible

collection: venv $(KUBERNETES_CORE)/MANIFEST.json
	@mkdir -p $(dir $(COLL_LINK)) .build/ansible-tmp
	@ln -sfn $(CURDIR) $(COLL_LINK)

# kubernetes.core, which playbooks/k8s_mig_config.yml uses (syntax checks, ansible-lint): Galaxy is out of reach
# here, so it is unpacked from the `ansible` package on PyPI, once (the wheel stays in .build/wheels).
$(KUBERNETES_CORE)/MANIFEST.json: | $(BIN)/ansible
	@mkdir -p .build/wheels
	$(BIN)/pip download -q --no-deps -d .build/wheels $(ANSIBLE_PACKAGE)
	rm -rf $(KUBERNETES_CORE)
	$(BIN)/python -c 'import sys, zipfile; w = zipfile.ZipFile(sys.argv[1]); \
		w.extractall(sys.argv[2], [n for n in w.namelist() if n.startswith("ansible_collections/kubernetes/core/")])' \
		.build/wheels/$(subst ==,-,$(ANSIBLE_PACKAGE))-py3-none-any.whl $(COLL)

# The simulated fleet, sliced by site.yml, then audited: the report prints at the end.
DEMO_INVENTORY := -i .build/demo-fleet/inventory.yml -i inventories/simulated/
demo: collection
	tests/simulator/migsim fleet --dir .build/demo-fleet --force --hosts 6
	$(BIN)/ansible-playbook $(DEMO_INVENTORY) playbooks/site.yml
	$(BIN)/ansible-playbook $(DEMO_INVENTORY) playbooks/audit.yml -e gpu_mig_report_dir=$(CURDIR)/.build/demo-report

# `make test` is what CI runs.
test: lint sanity ansible-units integration capacity-tests e2e-tests playbook-tests installed-collection molecule

# podman's Quadlet generator (Debian 13's, checked against the archive key): the services tests run it on the
# rendered .container files.
quadlet:
	@hacking/quadlet.sh >/dev/null

# Quick local loop: the unit tests under plain pytest.
unit: collection quadlet
	$(BIN)/pytest -q -n 2 tests/unit

# ansible-test needs the tree under ansible_collections/<ns>/<name>: a fresh copy of the tracked files (rsync
# --files-from deletes nothing, so a file moved since the last copy would linger there).
$(TESTCOPY): collection
	@rm -rf $(TESTCOPY) && mkdir -p $(TESTCOPY)
	@git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ $(TESTCOPY)/
	@rm -rf $(TESTCOPY)/.git && cp -a .git $(TESTCOPY)/.git

sanity: $(TESTCOPY)
	cd $(TESTCOPY) && $(CURDIR)/$(BIN)/ansible-test sanity --python 3.11 --local --color no

# Everything under tests/unit except the capacity tests, which measure latency and run on their own, serially.
ansible-units: $(TESTCOPY) quadlet
	cd $(TESTCOPY) && $(CURDIR)/$(BIN)/ansible-test units --python 3.11 --local --color no \
		tests/unit/plugins/ tests/unit/simulator/ tests/unit/services/ tests/unit/test_architecture.py tests/unit/test_artifact.py tests/unit/roles/

# ansible-test integration targets (tests/integration/targets/<module>): each module against simulated hosts.
.PHONY: integration
integration: $(TESTCOPY)
	cd $(TESTCOPY) && $(CURDIR)/$(BIN)/ansible-test integration --python 3.11 --local --color no

capacity-tests: collection
	$(BIN)/pytest -q -p no:xdist tests/unit/capacity

# End to end on loopback with the real binaries (Prometheus, Alertmanager, node_exporter, HAProxy): alerts must fire
# within their for: windows, so these run on their own, serially.
e2e-tests: collection
	$(BIN)/pytest -q -p no:xdist tests/unit/e2e

# Real ansible-playbook runs over simulated fleets (site.yml on a mixed fleet, the audit, the mig_mode role in a VM).
playbook-tests: collection
	$(BIN)/pytest -q -p no:xdist tests/unit/playbooks

# The collection as users get it: built, installed with ansible-galaxy into a temporary path and run from there
# (demo playbooks on a simulated fleet, the capacity role and CLI, ansible-doc) with nothing of the checkout on a path.
.PHONY: installed-collection
installed-collection: venv
	hacking/installed-collection.sh

lint: collection
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/ansible-lint
	$(BIN)/antsibull-changelog lint
	$(MAKE) importer

# galaxy-importer on the built artifact (its ansible-test step is `make sanity`).
importer: collection
	@mkdir -p .build/dist
	$(BIN)/ansible-galaxy collection build --force --output-path .build/dist
	printf '[galaxy-importer]\nRUN_ANSIBLE_TEST = False\nRUN_ANSIBLE_LINT = True\n' > .build/galaxy-importer.cfg
	GALAXY_IMPORTER_CONFIG=.build/galaxy-importer.cfg $(BIN)/python -m galaxy_importer.main .build/dist/gpu-mig-*.tar.gz

# Simulated-fleet scenarios, then systemd_hosts: real systemd hosts (podman + runc, systemd as PID 1; needs root and
# the packages .ci/run installs) with simulated GPUs and real CPU inference services. `make molecule-systemd` runs
# only that one.
MOLECULE_SCENARIOS := fleet_facts fleet_layout fleet_roles capacity systemd_hosts
molecule: collection
	for scenario in $(MOLECULE_SCENARIOS); do $(BIN)/molecule test -s $$scenario || exit 1; done

molecule-systemd: collection
	$(BIN)/molecule test -s systemd_hosts

# Figures, not tests. Locust (compared against by the capacity generator benchmark) is installed on demand into
# .build/bench-venv by the benchmark itself; wrk comes from Debian (apt-get install -y wrk).
benchmarks: collection
	$(BIN)/python benchmarks/facts_overhead.py
	$(BIN)/python benchmarks/apply_overhead.py
	$(BIN)/python benchmarks/module_instructions.py
	$(BIN)/python benchmarks/audit_overhead.py
	$(BIN)/python benchmarks/capacity_plans.py
	$(BIN)/python benchmarks/capacity_generator.py
	$(BIN)/python benchmarks/generator_hosts.py

clean:
	rm -rf .build tests/output
