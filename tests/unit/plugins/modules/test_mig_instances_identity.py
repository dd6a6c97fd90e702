# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Sticky slot identity: with the last applied slot map (slot_map_file), look-alike slots keep their MIG UUIDs across
reorders and edits to other slots; without it, they take ascending placements in the order written (as before)."""

from __future__ import annotations

import pytest

from ansible_collections.gpu.mig.plugins.module_utils._mig import slot_files
from ansible_collections.gpu.mig.plugins.modules import mig_instances


def look_alikes(*names: str) -> list:
    return [{"gpus": 0, "slots": [{"name": name, "profile": "1g.5gb"} for name in names]}]


def uuids(result: dict) -> dict:
    return {name: slot["mig_uuid"] for name, slot in result["slots"].items()}


@pytest.fixture
def applied(sim_host, run_module, tmp_path):
    """An A100 converged on [web, ocr, x] (three 1g.5gb), its slot map written as the mig_layout role writes it."""

    def apply(*names: str):
        sim_host("A100-SXM4-40GB:mig=on", init=False)
        result, failed = run_module(mig_instances, {"layout": look_alikes(*names)})
        assert not failed, result.get("msg")
        path = tmp_path / "slots.json"
        path.write_text(slot_files.slot_map_text(result["slots"]))
        return result, str(path)

    return apply


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (["web", "ocr"], ["ocr", "web"]),  # reorder
        (["web", "ocr"], ["x", "web", "ocr"]),  # a third look-alike, written first
        (["web", "ocr", "x"], ["web", "x"]),  # remove the middle one
        (["web", "ocr", "x"], ["x", "ocr"]),  # remove one and reorder the rest
    ],
)
def test_each_slot_keeps_its_mig_uuid_with_the_slot_map(applied, run_module, before, after):
    first, path = applied(*before)
    args = {"layout": look_alikes(*after), "slot_map_file": path}
    checked, failed = run_module(mig_instances, args, check_mode=True)
    assert not failed, checked.get("msg")
    real, failed = run_module(mig_instances, args)
    assert not failed, real.get("msg")
    assert checked["plan"] == real["plan"] and checked["changed"] is real["changed"] is (set(before) != set(after))
    for name in set(before) & set(after):
        assert real["slots"][name]["mig_uuid"] == checked["slots"][name]["mig_uuid"] == first["slots"][name]["mig_uuid"]
        assert real["slots"][name]["placement"] == first["slots"][name]["placement"]
    kept = {first["slots"][name]["mig_uuid"] for name in set(before) & set(after)}
    assert {real["slots"][name]["mig_uuid"] for name in set(after) - set(before)}.isdisjoint(kept)


def test_without_the_slot_map_look_alikes_take_placements_in_the_order_written(applied, run_module):
    first, _path = applied("web", "ocr")
    reordered, failed = run_module(mig_instances, {"layout": look_alikes("ocr", "web")})
    assert not failed and reordered["changed"] is False
    assert uuids(reordered) == {"ocr": first["slots"]["web"]["mig_uuid"], "web": first["slots"]["ocr"]["mig_uuid"]}


def test_a_missing_slot_map_is_no_history(applied, run_module, tmp_path):
    first, _path = applied("web", "ocr")
    args = {"layout": look_alikes("web", "ocr"), "slot_map_file": str(tmp_path / "absent.json")}
    result, failed = run_module(mig_instances, args)
    assert not failed and result["changed"] is False and uuids(result) == uuids(first)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is not JSON (Expecting property name"),
        ("[]", "the slot map must be a mapping of slot name -> slot, not list []"),
        (
            '{"web": {"gpu_uuid": "GPU-1", "profile": "", "placement": {"start": "4"}}, "ocr": 3}',
            "slot 'web': profile is ''; it must be a non-empty string",
        ),
        (b"\xff\xfe", "is not JSON ('utf-8' codec can't decode"),
        (None, "cannot be read (Is a directory)"),
    ],
    ids=["json", "list", "fields", "bytes", "directory"],
)
def test_a_bad_slot_map_fails_naming_the_file_and_the_fix_and_changes_nothing(
    applied, run_module, snapshot, sim_host, tmp_path, content, expected
):
    applied("web", "ocr")
    path = tmp_path / "bad"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb"], init=False)
    before = snapshot(host)
    for check_mode in (True, False):
        result, failed = run_module(
            mig_instances, {"layout": look_alikes("web"), "slot_map_file": str(path)}, check_mode=check_mode
        )
        assert failed and result["changed"] is False
        assert f"slot_map_file {path}" in result["msg"] and expected in result["msg"]
        assert content is None or "repair it, or remove it" in result["msg"]
    assert snapshot(host) == before
