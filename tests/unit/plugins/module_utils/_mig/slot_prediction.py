# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Compare the slot map check mode predicts with the one the real run returns."""

from __future__ import annotations

NEW_IDS = ("gpu_instance_id", "compute_instance_id", "mig_uuid")


def assert_predicted(checked: dict, real: dict, old_uuids: set[str]) -> None:
    """Check mode's slot map equals the real one, except ids and UUIDs NVML hands out in the run.

    Those are None in check mode and, in the real run, new: never a MIG UUID found before the run (``old_uuids``).
    """
    assert checked.keys() == real.keys()
    for name, want in checked.items():
        got = real[name]
        same = {k: v for k, v in want.items() if k not in (*NEW_IDS, "compute_instances")}
        assert same == {k: got[k] for k in same}, name
        assert [(c["name"], c["profile"]) for c in want["compute_instances"]] == [
            (c["name"], c["profile"]) for c in got["compute_instances"]
        ], name
        for before, after in zip((want, *want["compute_instances"]), (got, *got["compute_instances"]), strict=True):
            for key in ("gpu_instance_id", "compute_instance_id", "id", "mig_uuid"):
                if key not in before:
                    continue
                if before[key] is None:
                    assert after[key] is not None and after[key] not in old_uuids, (name, key)
                else:
                    assert after[key] == before[key], (name, key)
