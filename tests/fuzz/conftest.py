"""Hypothesis profiles for the property-based (fuzz) suites.

``fast`` (the default) keeps the default test run short; ``long`` is what CI's slow step runs
(``MOEKIT_HYPOTHESIS_PROFILE=long python -m pytest -n 2 tests/fuzz``). Deadlines are off: a fit's
time depends on the machine's load, and a slow example is not a failure.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, derandomize=False, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])
settings.register_profile("fast", max_examples=25, **_COMMON)
settings.register_profile("long", max_examples=400, **_COMMON)
settings.load_profile(os.environ.get("MOEKIT_HYPOTHESIS_PROFILE", "fast"))
