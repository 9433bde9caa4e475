"""Field types shared by the pydantic models at every boundary, so one bound has one definition.

A request's seed, temperature and top_p are checked by the server's schemas, the driver's
ReasonConfig and the engines' SamplingParams; with these aliases the three cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

# llama.cpp, transformers, vLLM and onnxruntime-genai all accept a non-negative 32-bit seed
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
# 0 is greedy decoding; above 5 the samples are noise for any model this SDK serves
Temperature = Annotated[float, Field(ge=0.0, le=5.0)]
# nucleus sampling: the smallest set of tokens whose probability reaches top_p (0 keeps none)
TopP = Annotated[float, Field(gt=0.0, le=1.0)]

__all__ = ["Seed", "Temperature", "TopP"]
