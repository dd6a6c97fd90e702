"""Fixtures for the simulator tests (reusable: import them from nvmlsim.testing)."""

from nvmlsim.testing import sim_host

__all__ = ["sim_host"]
