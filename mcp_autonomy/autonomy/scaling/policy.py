"""Scaling policies: how many replicas the measured load calls for, now and one pod start-up ahead.

This module is the flat public surface; each concern has its own module:

- `decision`: the `ScalingDecision`, `ScaleGuards`, the `ScalingPolicy` protocol, input checks;
- `reactive`: `ReactivePolicy`, the Kubernetes HPA's arithmetic on our own load metric;
- `forecast`: `LoadForecaster`, learned daily/weekly profiles and calibrated forecast errors;
- `cost`: `CostMatcher`, spend against the reactive rule;
- `predictive`: `PredictivePolicy`, provisioning for a high quantile of the next window's load.
"""

from __future__ import annotations

from mcp_autonomy.autonomy.scaling.cost import (
    DEFAULT_COST_BUDGET,
    DEFAULT_COST_GAIN,
    DEFAULT_COST_WINDOW_S,
    DEFAULT_MAX_SAFETY_QUANTILE,
    DEFAULT_MIN_SAFETY_QUANTILE,
    CostMatcher,
)
from mcp_autonomy.autonomy.scaling.decision import (
    DEFAULT_MAX_REPLICAS,
    DEFAULT_MIN_REPLICAS,
    DEFAULT_SCALE_UP_THRESHOLD,
    DEFAULT_TARGET_TPM_PER_INSTANCE,
    NO_GUARDS,
    SECONDS_PER_DAY,
    SECONDS_PER_WEEK,
    RecommendationHistory,
    ScaleGuards,
    ScalingDecision,
    ScalingPolicy,
    ScalingRule,
    capacity_tpm,
    check_inputs,
    week_offset_s,
)
from mcp_autonomy.autonomy.scaling.forecast import (
    ORIGINAL_MODULE_PRIOR_SCHEDULE,
    ForecastConfig,
    ForecastOutlook,
    LoadForecaster,
    PriorScheduleEntry,
    quantile_of_sorted,
)
from mcp_autonomy.autonomy.scaling.predictive import (
    DEFAULT_LEAD_MARGIN_S,
    DEFAULT_SCALE_DOWN_HOLD_S,
    DEFAULT_STARTUP_S,
    PredictiveConfig,
    PredictivePolicy,
)
from mcp_autonomy.autonomy.scaling.reactive import ReactiveConfig, ReactivePolicy

__all__ = [
    "DEFAULT_COST_BUDGET",
    "DEFAULT_COST_GAIN",
    "DEFAULT_COST_WINDOW_S",
    "DEFAULT_LEAD_MARGIN_S",
    "DEFAULT_MAX_REPLICAS",
    "DEFAULT_MAX_SAFETY_QUANTILE",
    "DEFAULT_MIN_REPLICAS",
    "DEFAULT_MIN_SAFETY_QUANTILE",
    "DEFAULT_SCALE_DOWN_HOLD_S",
    "DEFAULT_SCALE_UP_THRESHOLD",
    "DEFAULT_STARTUP_S",
    "DEFAULT_TARGET_TPM_PER_INSTANCE",
    "NO_GUARDS",
    "ORIGINAL_MODULE_PRIOR_SCHEDULE",
    "SECONDS_PER_DAY",
    "SECONDS_PER_WEEK",
    "CostMatcher",
    "ForecastConfig",
    "ForecastOutlook",
    "LoadForecaster",
    "PredictiveConfig",
    "PredictivePolicy",
    "PriorScheduleEntry",
    "ReactiveConfig",
    "ReactivePolicy",
    "RecommendationHistory",
    "ScaleGuards",
    "ScalingDecision",
    "ScalingPolicy",
    "ScalingRule",
    "capacity_tpm",
    "check_inputs",
    "quantile_of_sorted",
    "week_offset_s",
]
