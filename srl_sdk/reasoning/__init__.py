"""The step driver: engine tokens -> typed, checked Steps."""

from srl_sdk.reasoning.driver import Driver, DriverEvent, Finished, ReasonConfig, TokenDelta, validate_problem

__all__ = ["Driver", "DriverEvent", "Finished", "ReasonConfig", "TokenDelta", "validate_problem"]
