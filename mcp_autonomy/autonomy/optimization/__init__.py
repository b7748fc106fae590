"""Auto-optimization, the pure parts: evidence, tuners, statistical tests and canary verdicts.

- `LaneEvidence` (evidence.py): what was measured for one provider over one window.
- Tuners (algorithms.py): one class per tunable behind the `Tuner` protocol, each turning
  evidence into a `Proposal` or None; `DEFAULT_TUNERS` holds one of each.
- `mann_whitney_u`, `two_proportion_test` (stats.py): the tests, without scipy.
- `evaluate` (canary.py): keep, revert or continue a canary, with the evidence.

No I/O, no clock reads, no asyncio: the optimizer loop owns time, traffic splits and persistence.
"""

from __future__ import annotations

from mcp_autonomy.autonomy.optimization.algorithms import (
    DEFAULT_TUNERS,
    SAFER_DIRECTION,
    TUNABLE_PARAMETERS,
    BreakerThresholdTuner,
    BreakerThresholdTunerConfig,
    BreakerWaitTuner,
    BreakerWaitTunerConfig,
    CacheTtlTuner,
    CacheTtlTunerConfig,
    Proposal,
    RateLimitTuner,
    RateLimitTunerConfig,
    RestoringTuner,
    RetryTuner,
    RetryTunerConfig,
    TimeoutTuner,
    TimeoutTunerConfig,
    Tuner,
    apply_proposal,
    parameter_bounds,
    widens_safety,
)
from mcp_autonomy.autonomy.optimization.canary import (
    ArmSamples,
    CanaryConfig,
    CanaryDecision,
    CanaryVerdict,
    evaluate,
    target_metrics,
)
from mcp_autonomy.autonomy.optimization.evidence import LaneEvidence
from mcp_autonomy.autonomy.optimization.stats import (
    Alternative,
    TestResult,
    mann_whitney_u,
    two_proportion_test,
)

__all__ = [
    "DEFAULT_TUNERS",
    "SAFER_DIRECTION",
    "TUNABLE_PARAMETERS",
    "Alternative",
    "ArmSamples",
    "BreakerThresholdTuner",
    "BreakerThresholdTunerConfig",
    "BreakerWaitTuner",
    "BreakerWaitTunerConfig",
    "CacheTtlTuner",
    "CacheTtlTunerConfig",
    "CanaryConfig",
    "CanaryDecision",
    "CanaryVerdict",
    "LaneEvidence",
    "Proposal",
    "RateLimitTuner",
    "RateLimitTunerConfig",
    "RestoringTuner",
    "RetryTuner",
    "RetryTunerConfig",
    "TestResult",
    "TimeoutTuner",
    "TimeoutTunerConfig",
    "Tuner",
    "apply_proposal",
    "evaluate",
    "mann_whitney_u",
    "parameter_bounds",
    "target_metrics",
    "two_proportion_test",
    "widens_safety",
]
