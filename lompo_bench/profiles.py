"""Scale profiles. Every long job (collection, training, evaluation) takes one.

- ``smoke``: seconds, for tests.
- ``cpu``: one job on one CPU core, two at a time on 2 cores: 15-40 min a run on walker
  (BC and CQL ~17, SLAC ~26, LOMPO/LMBRL 24-38), evaluation included.
- ``paper``: the paper's sizes (Appendix A datasets, Appendix C networks); meant for an accelerator.

Each component owns its own per-profile numbers next to its config; this module only names
the profiles and validates them, so the names cannot drift apart.
"""

from .errors import choice_error

PROFILES = ("smoke", "cpu", "paper")
DEFAULT_PROFILE = "paper"


def check(profile: str) -> str:
    if profile not in PROFILES:
        raise choice_error("profile", profile, PROFILES)
    return profile
