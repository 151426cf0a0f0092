"""Shared test settings: the hypothesis profiles of the property tests (tests/test_property_*.py), and the
``one_thread`` fixture for tests that train a tiny network.

``ci`` (the default) runs a few dozen examples per property, derandomized (the examples are a function of the
test's source, not of a random seed or of earlier runs) and without an example database, so the outcome does not
depend on run order or on what ran before. ``slow`` runs thousands per property with fresh random examples; it is
chosen by ``HYPOTHESIS_PROFILE=slow`` or by ``PERCEPTION_SLOW_TESTS=1`` (which also turns on the other slow tests).
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=40, derandomize=True, database=None, deadline=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE")
                      or ("slow" if os.environ.get("PERCEPTION_SLOW_TESTS") == "1" else "ci"))


@pytest.fixture()
def one_thread():
    """Train the tiny test networks on one thread (fastest for them; results do not depend on it), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
