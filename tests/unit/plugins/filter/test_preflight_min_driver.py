# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Minimum drivers have one definition, the MIG catalog: preflight_report and the preflight role only read it."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.gpu.mig.plugins.filter.preflight import preflight_report
from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog

REPO = Path(__file__).resolve().parents[4]
DRIVER = {"loaded": True, "error": None, "driver_version": "999.1.1"}
PRODUCTS = [(alias, name) for name, m in _catalog.all_models().items() for alias in (name, *m.aliases)]
# Files that used to hold a copy of the table; a driver version (three-digit major) there is a second definition.
NO_COPIES = [
    "plugins/filter/preflight.py",
    "plugins/filter/preflight_report.yml",
    "playbooks/audit.yml",
    *(
        str(p.relative_to(REPO))
        for d in ("defaults", "meta", "tasks", "vars")
        for p in (REPO / "roles/preflight" / d).glob("*")
    ),
]


def minimum(product: str, **options) -> str | None:
    """The minimum driver preflight_report gives a managed MIG GPU of this product name."""
    gpu = {"index": 0, "name": product, "uuid": "GPU-0", "pci_bus_id": "00000000:07:00.0"}
    gpu["mig"] = {"supported": True, "current": True, "pending": True}
    facts = {"nvidia_mig": {"driver": DRIVER, "gpus": [gpu]}}
    return preflight_report(facts, "h", layout=[{"gpus": 0}], **options)["gpus"][0]["min_driver"]


@pytest.mark.parametrize(("product", "model"), PRODUCTS, ids=[p for p, _unused in PRODUCTS])
def test_every_shipped_model_and_alias_gets_the_catalogs_minimum(product, model):
    assert minimum(product) == _catalog.all_models()[model].min_driver


@pytest.mark.parametrize(
    ("product", "family"),
    [
        ("NVIDIA A100X", "NVIDIA A100-SXM4-40GB"),
        ("NVIDIA A100-PCIE-80GB", "NVIDIA A100-SXM4-80GB"),
        ("NVIDIA H100 SXM5 94GB", "NVIDIA H100 80GB HBM3"),
        ("NVIDIA H200 NVL", "NVIDIA H200"),
        ("NVIDIA GB200", "NVIDIA B200"),
    ],
)
def test_a_product_the_catalog_lacks_gets_its_familys_minimum(product, family):
    assert minimum(product) == _catalog.all_models()[family].min_driver


def test_a_product_without_mig_in_the_catalog_has_no_minimum():
    assert minimum("NVIDIA L4") is None


def test_the_report_follows_the_catalog(monkeypatch):
    """Change a model's minimum in the catalog data: the report changes with it (no second table anywhere)."""
    raw = copy.deepcopy(_catalog._raw_models())
    raw["NVIDIA A30"]["min_driver"] = "999.0.1"
    raw["NVIDIA H100 PCIe"]["min_driver"] = "777.0.1"  # a family whose models differ: its highest minimum
    monkeypatch.setattr(_catalog, "_raw_models", lambda: raw)
    assert (minimum("NVIDIA A30"), minimum("A30")) == ("999.0.1", "999.0.1")
    assert (minimum("NVIDIA H100 PCIe"), minimum("NVIDIA H100 NVL")) == ("777.0.1", "525.85.12")
    assert minimum("NVIDIA H100 SXM5 94GB") == "777.0.1"


def test_caller_entries_come_before_the_catalog_and_leave_other_models_checked():
    overrides = [{"match": "H100", "version": "560.0.0"}]
    assert minimum("NVIDIA H100 80GB HBM3", min_driver=overrides) == "560.0.0"
    assert minimum("NVIDIA A30", min_driver=overrides) == _catalog.all_models()["NVIDIA A30"].min_driver
    assert minimum("NVIDIA A30", min_driver=[]) == minimum("NVIDIA A30")


def test_longer_matches_come_first():
    table = _catalog.min_driver_table()
    assert [len(e["match"]) for e in table] == sorted((len(e["match"]) for e in table), reverse=True)
    assert next(e["match"] for e in table if e["match"] in "NVIDIA GH200 480GB") == "NVIDIA GH200 480GB"


@pytest.mark.parametrize("path", NO_COPIES)
def test_no_driver_version_is_written_outside_the_catalog(path):
    assert re.findall(r"\b[0-9]{3}\.[0-9]+\.[0-9]+\b", (REPO / path).read_text()) == []


def test_the_role_default_and_its_argument_spec_hold_no_table():
    defaults = yaml.safe_load((REPO / "roles/preflight/defaults/main.yml").read_text())
    spec = yaml.safe_load((REPO / "roles/preflight/meta/argument_specs.yml").read_text())
    assert (
        defaults["preflight_min_driver"] == spec["argument_specs"]["main"]["options"]["preflight_min_driver"]["default"]
    )
    assert defaults["preflight_min_driver"] == []
