"""srl-sdk: small language models that reason step by step, and show every step.

The top-level surface is small on purpose; heavy libraries (torch, llama.cpp, LitServe) are only
imported by the parts that need them, so `import srl_sdk` stays light.
"""

from srl_sdk.client import AsyncReasoner, Reasoner
from srl_sdk.core.steps import CheckResult, Confidence, Step, Trace
from srl_sdk.errors import SRLError
from srl_sdk.reasoning import ReasonConfig
from srl_sdk.store import TraceStore

__version__ = "0.1.0"

__all__ = [
    "AsyncReasoner",
    "CheckResult",
    "Confidence",
    "ReasonConfig",
    "Reasoner",
    "SRLError",
    "Step",
    "Trace",
    "TraceStore",
    "__version__",
]
