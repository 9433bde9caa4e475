"""`srl export gguf|lora-gguf|onnx` and `srl edge check`. Heavy libraries load inside the commands only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

export_app = typer.Typer(help="Build edge models: quantized GGUF (llama.cpp) and ONNX (onnxruntime).",
                         no_args_is_help=True)
edge_app = typer.Typer(help="Check edge builds against the model they came from.", no_args_is_help=True)


def _print_report(report) -> None:
    from srl_sdk.cli_common import console

    console.print(report.markdown(), markup=False)
    console.print(f"parity report: {report.json_path} and {report.markdown_path}", markup=False)


def _parity(build: Path, against: str, problems: int, data: Optional[Path], max_steps: int, threads: int):
    from srl_sdk.edge.parity import ParityConfig, check_parity

    return check_parity(build, against, ParityConfig(problems=problems, data=data, max_steps=max_steps, n_threads=threads))


def register(app: typer.Typer) -> None:
    from srl_sdk.cli_common import console, err_console, friendly_errors

    app.add_typer(export_app, name="export")
    app.add_typer(edge_app, name="edge")

    @export_app.command("gguf")
    @friendly_errors
    def export_gguf_command(
        model: str = typer.Argument(..., help="HF model folder, PEFT adapter folder, .gguf file or 'smollm2'."),
        quant: str = typer.Option("q8_0", help="q8_0 | q4_0 | q4_1 | q5_0 | q5_1 | q4_k_m | q5_k_m | q6_k | f16"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .gguf (default builds/<model>-<quant>.gguf)."),
        base: Optional[str] = typer.Option(None, help="Base model of an adapter, when its config does not name one that exists."),
        converter: str = typer.Option("auto", help="auto | official (llama.cpp's converter) | gguf-py (Llama family)."),
        tokenizer_from: Optional[Path] = typer.Option(None, help="GGUF whose tokenizer the gguf-py writer copies."),
        check: bool = typer.Option(False, "--check", help="Run the parity report against MODEL afterwards."),
        problems: int = typer.Option(5, min=1, help="Held-out problems for --check."),
        data: Optional[Path] = typer.Option(None, help="GSM8K-style JSONL for --check."),
        max_steps: int = typer.Option(4, min=1, help="Steps per problem for --check."),
        threads: int = typer.Option(2, min=1, help="CPU threads."),
    ) -> None:
        """MODEL -> merged HF -> GGUF (llama.cpp's converter) -> quantized (llama.cpp's quantizer)."""
        from srl_sdk.edge.gguf_export import GGUFExportConfig, check_quant, export_gguf

        config = GGUFExportConfig(quant=check_quant(quant), out=out, converter=converter,  # type: ignore[arg-type]
                                  tokenizer_gguf=tokenizer_from, n_threads=threads)
        result = export_gguf(model, config, base=base)
        for note in result.warnings:
            err_console.print(f"[yellow]warning:[/] {note}", markup=True)
        console.print(f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB, {result.quant}, "
                      f"converter {result.converter}, {result.seconds:.1f} s)", markup=False)
        if check:
            _print_report(_parity(result.path, model, problems, data, max_steps, threads))

    @export_app.command("lora-gguf")
    @friendly_errors
    def export_lora_gguf_command(
        adapter: Path = typer.Argument(..., help="PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .gguf (default builds/<adapter>.lora.gguf)."),
        base: Optional[str] = typer.Option(None, help="Base GGUF the adapter applies to (default: the GGUF it was trained from, else 'smollm2')."),
        outtype: str = typer.Option("q8_0", help="q8_0 (Q8_0 where rows allow, else F16: smallest) | f16 | f32."),
        check: bool = typer.Option(True, "--check/--no-check", help="Load base + adapter in llama.cpp once afterwards."),
    ) -> None:
        """ADAPTER -> a llama.cpp LoRA GGUF (a few MB) that llama.cpp applies to the base GGUF at load time."""
        from srl_sdk.edge.lora_gguf import export_lora_gguf

        result = export_lora_gguf(adapter, out, base=base, outtype=outtype, check_load=check)
        checked = ", llama.cpp loads it" if result.load_checked else ""
        console.print(f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB, {result.n_pairs} LoRA pairs, "
                      f"r={result.rank}, alpha={result.alpha:g}, {result.outtype}, base {result.base.name}, "
                      f"{result.seconds:.1f} s{checked})", markup=False)
        if len(result.chain) > 1:
            console.print(f"{len(result.chain)} stage adapters summed, first trained first: "
                          + ", ".join(str(folder) for folder in result.chain), markup=False)

    @export_app.command("onnx")
    @friendly_errors
    def export_onnx_command(
        model: str = typer.Argument(..., help="HF model folder, PEFT adapter folder, .gguf file or 'smollm2'."),
        int8: bool = typer.Option(False, "--int8", help="int8 weights (default)."),
        int4: bool = typer.Option(False, "--int4", help="int4 weights: smallest and fastest on CPU."),
        fp32: bool = typer.Option(False, "--fp32", help="No quantization."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default builds/<model>-onnx-<precision>)."),
        base: Optional[str] = typer.Option(None, help="Base model of an adapter."),
        cuda: bool = typer.Option(False, "--cuda", help="Build for the CUDA execution provider."),
        check: bool = typer.Option(False, "--check", help="Run the parity report against MODEL afterwards."),
        problems: int = typer.Option(5, min=1, help="Held-out problems for --check."),
        data: Optional[Path] = typer.Option(None, help="GSM8K-style JSONL for --check."),
        max_steps: int = typer.Option(4, min=1, help="Steps per problem for --check."),
        threads: int = typer.Option(2, min=1, help="CPU threads."),
    ) -> None:
        """MODEL -> merged HF -> ONNX decoder with KV cache (onnxruntime-genai's builder)."""
        from srl_sdk.edge.onnx_export import OnnxExportConfig, export_onnx
        from srl_sdk.errors import ConfigError

        chosen = [name for name, flag in (("int8", int8), ("int4", int4), ("fp32", fp32)) if flag]
        if len(chosen) > 1:
            raise ConfigError("choose one of --int8, --int4, --fp32")
        config = OnnxExportConfig(precision=(chosen or ["int8"])[0], out=out,  # type: ignore[arg-type]
                                  execution_provider="cuda" if cuda else "cpu", n_threads=threads)
        result = export_onnx(model, config, base=base)
        console.print(f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB, {result.precision}, "
                      f"{result.seconds:.1f} s)", markup=False)
        if check:
            _print_report(_parity(result.path, model, problems, data, max_steps, threads))

    @edge_app.command("check")
    @friendly_errors
    def edge_check_command(
        build: Path = typer.Argument(..., help="A .gguf file or an ONNX build folder."),
        against: str = typer.Option(..., "--against", help="The model it was made from (.gguf, 'smollm2', folder)."),
        problems: int = typer.Option(5, min=1, help="Held-out problems."),
        data: Optional[Path] = typer.Option(None, help="GSM8K-style JSONL (default ../shared/data/gsm8k/train.jsonl)."),
        max_steps: int = typer.Option(4, min=1, help="Steps per problem."),
        threads: int = typer.Option(2, min=1, help="CPU threads."),
    ) -> None:
        """Parity report: accuracy, answer agreement, step similarity, size, load time, speed, memory."""
        _print_report(_parity(build, against, problems, data, max_steps, threads))
