"""Hypothesis profiles of the fuzz tests.

* ``ci`` (loaded by default): 25 examples per test, derandomized (the same
  examples on every run, no example database), no deadline.
* ``long``: 2000 examples per test, random, with the example database (failures
  are replayed first on the next run).

Select one with ``pytest tests/fuzz --hypothesis-profile=long``. The flag is read
by hypothesis's pytest plugin at configure time, when this conftest is already
imported if ``tests/fuzz`` (or a file in it) is on the command line; from the
repository root with no path, register the profiles in ``tests/conftest.py``
instead (hypothesis looks the profile up before collecting this directory).
"""
from __future__ import annotations

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile("ci", max_examples=25, derandomize=True, database=None, **_COMMON)
settings.register_profile("long", max_examples=2000, **_COMMON)
settings.load_profile("ci")


def pytest_configure(config) -> None:
    # Re-apply an explicit --hypothesis-profile when this conftest was imported
    # after hypothesis's plugin loaded it (load_profile above would override it).
    try:
        profile = config.getoption("hypothesis_profile")
    except ValueError:
        profile = None
    if profile:
        settings.load_profile(profile)
