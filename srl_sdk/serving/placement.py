"""Where one inference worker's engine runs: its device and its CPU threads.

LitServe 0.2.19 starts `workers x devices` worker processes (`workers_per_device`) and hands
each worker's `setup()` a device: the string "cpu" for every worker with `accelerator: cpu`
(`devices` is not used on CPU), "cuda:N" with `accelerator: cuda`, the devices taken in turn
(devices 2, workers 2: cuda:0, cuda:1, cuda:0, cuda:1). This module turns that device into the
engine's arguments, so that two workers never fight over the same cores or the same GPU:

- CPU: the workers share the machine's cores. With more than one worker, an engine whose thread
  count is not set in `engine_options` gets the cores divided between the workers (at most 4
  each, the engines' own cap); a thread count set in `engine_options` is per worker, as written.
  OpenMP's threads (llama.cpp's, onnxruntime's) spin briefly at each of the hundreds of barriers in
  a token's graph, which is what makes them fast; only when the workers' threads together outnumber
  the cores does a spinning thread take a core another worker needs, and then the workers get
  `OMP_WAIT_POLICY=PASSIVE` (sleep at once). Passive on a machine that is not oversubscribed costs
  about a fifth of the decode rate (docs/benchmarks.md "Prompt work per step"). An OMP_WAIT_POLICY the
  server was started with is left as it is.
- CUDA: the worker sees only its GPU (`CUDA_VISIBLE_DEVICES`, set before the engine imports its
  CUDA library, mapped through any CUDA_VISIBLE_DEVICES the server was started with), and the
  transformers engine is given that GPU as its torch device. vLLM with tensor, pipeline or
  data parallelism spans several GPUs from one worker, so its visibility is left alone (one
  worker, `devices: 1`: server/gpu-vllm-multi.yaml). An explicit `device` in `engine_options`
  wins and pins nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

MAX_THREADS_PER_WORKER = 4  # the engines' own default cap: more threads do not help a small model

# the engine argument that sets a worker's CPU threads
THREAD_OPTION = {"llama.cpp": "n_threads", "transformers": "n_threads", "onnx": "n_threads", "vllm": "threads"}
_ALIASES = {"llama_cpp": "llama.cpp", "llamacpp": "llama.cpp", "gguf": "llama.cpp", "hf": "transformers",
            "onnxruntime": "onnx", "ort": "onnx"}
_MULTI_GPU_OPTIONS = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")


@dataclass
class Placement:
    """The engine's keyword arguments and the environment to set before loading it."""

    options: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"  # as LitServe named it (what /metrics shows), e.g. "cuda:1"

    def apply_env(self) -> None:
        os.environ.update(self.env)


def engine_name(engine: str | None, model: str) -> str:
    """The engine's canonical name (config.engine may be an alias, or None: guessed from the model)."""
    if engine is None:
        from srl_sdk.engines import guess_engine

        return guess_engine(model)
    name = engine.lower()
    return _ALIASES.get(name, name)


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's cpuset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def place(engine: str, device: str, options: dict[str, Any], workers: int, cpus: int | None = None,
          visible: str | None = None) -> Placement:
    """The placement of one worker of `engine` on `device`, with `workers` workers per device.

    `cpus`: usable cores (default: this process's); `visible`: the CUDA_VISIBLE_DEVICES the
    server was started with (default: the environment's)."""
    options = dict(options)
    device = str(device or "cpu")
    if device == "cpu" or not device.startswith("cuda"):
        key = THREAD_OPTION.get(engine)
        cpus = cpus or usable_cpus()
        if workers > 1 and key is not None and options.get(key) is None:
            options[key] = max(1, min(MAX_THREADS_PER_WORKER, cpus // workers))
        threads = int(options.get(key) or min(MAX_THREADS_PER_WORKER, cpus)) if key else 1
        oversubscribed = workers * threads > cpus and "OMP_WAIT_POLICY" not in os.environ
        return Placement(options, env={"OMP_WAIT_POLICY": "PASSIVE"} if oversubscribed else {}, device=device)
    if "device" in options:  # the user placed the engine themselves
        return Placement(options, device=device)
    if engine == "vllm" and _spans_gpus(options):
        return Placement(options, device=device)  # one worker spans several GPUs: vLLM places its ranks
    index = device.partition(":")[2] or "0"
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        physical = ids[int(index)] if index.isdigit() and int(index) < len(ids) else index
    else:
        physical = index
    if engine == "transformers":
        options["device"] = "cuda:0"  # the one GPU this worker sees
    return Placement(options, env={"CUDA_VISIBLE_DEVICES": physical}, device=device)


def _spans_gpus(options: dict[str, Any]) -> bool:
    """vLLM options (or AsyncEngineArgs passed through under `engine_options`) asking for several GPUs."""
    nested = options.get("engine_options")
    sources = [options, nested] if isinstance(nested, dict) else [options]
    return any(int(source.get(name) or 1) > 1 for source in sources for name in _MULTI_GPU_OPTIONS)
