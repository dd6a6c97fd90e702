# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Host-side MIG core: NVML adapter, catalog, selectors, layout solver and planner, apply (PRIVATE)."""
