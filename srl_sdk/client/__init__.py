"""Reasoner / AsyncReasoner: local or remote, same Steps and Traces."""

from srl_sdk.client.reasoner import AsyncReasoner, AsyncStepStream, Reasoner, StepStream

__all__ = ["AsyncReasoner", "AsyncStepStream", "Reasoner", "StepStream"]
