"""Rules and alerts (SPEC section 4): the pure engine and the built-in profile."""

from .engine import Alert, AlertChange, RulesEngine
from .means import RollingMean
from .profile import FIXED, RuleSet, ThresholdRule, build, tvoc_ppb_to_mgm3

__all__ = ["FIXED", "Alert", "AlertChange", "RollingMean", "RuleSet", "RulesEngine", "ThresholdRule", "build",
           "tvoc_ppb_to_mgm3"]
