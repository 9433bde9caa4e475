"""REAL 2-process training on CPU: `accelerate launch` (torchrun, gloo) runs `srl train` on SmolLM2.

One recipe, `sft_srl`: a 1-step SFT stage, then a 2-step SRL stage with dynamic sampling (its
rounds are decided on gathered rewards; a rank that ran one round more would hang in a gather).
The first launch replaces an older run (`--overwrite`, the race where rank 1's stage folder made
rank 0 refuse or delete it) and is SIGKILLed, launcher and every rank, once SRL's checkpoint-1 is
complete; an incomplete checkpoint-3 is planted; the second launch `--resume`s on 2 ranks: SFT is
skipped, SRL continues from checkpoint-1 (only rank 0 sets the incomplete one aside), and the
merged `final/` is written once. Checked: both ranks' step, dynamic-sampling rounds and trainable
weights agree (gathered into state.json by `rank_report`), checkpoints, resume, and a final model
with the single-process layout that loads and generates.

accelerate runs several CPU processes through mpirun for `--cpu`; `--multi_gpu` on a machine
without a GPU starts them with torchrun instead, and the process group falls back to gloo.
Sizes: batch 2 per rank, 2 generations, 8-token completions: ~2.5 minutes of CPU time; the
launch tree's peak RSS is printed (measured 8.8-9.3 GiB for the 2 ranks together).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from srl_sdk.training.reports import METRICS_FILE, read_metrics

ACCELERATE = Path(sys.executable).with_name("accelerate")
RECIPE = {
    "name": "two-ranks",
    "method": "sft_srl",
    "model": "smollm2",
    "device": "cpu",
    "torch_threads": 1,
    "report_to": [],
    "data": {"source": "gsm8k", "limit": 4, "validation_size": 1},
    "sft": {"sft_mode": "step", "max_steps": 1, "learning_rate": 2e-3, "per_device_train_batch_size": 2,
            "save_steps": 1, "max_length": 384},
    "srl": {"max_steps": 2, "per_device_train_batch_size": 2, "num_generations": 2, "max_completion_length": 8,
            "learning_rate": 1e-3, "save_steps": 1, "dynamic_sampling": {"max_rounds": 1}},
}


class TreeRss:
    """Peak summed RSS of a process and its descendants, sampled every 0.5 s (psutil)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.peak = 0
        self._root = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            try:
                procs = [self._root, *self._root.children(recursive=True)]
                total = 0
                for proc in procs:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(recipe: Path, out: Path, log: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
               "-m", "srl_sdk.cli", "train", "--recipe", str(recipe), "--output", str(out), *flags]
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every worker. torchrun starts each worker in its own session, so
    killing the launcher's process group alone leaves the ranks training on as orphans."""
    import psutil

    try:
        victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        victims = []
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs(victims, timeout=60)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


@pytest.mark.slow
def test_two_ranks_train_checkpoint_resume_and_merge(tmp_path) -> None:
    recipe = tmp_path / "two-ranks.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    out = tmp_path / "run"
    out.mkdir()
    (out / "srl-run.json").write_text('{"name": "older"}', encoding="utf-8")  # an older run to replace
    (out / "older-file.txt").write_text("old", encoding="utf-8")

    # 1) a fresh run over the old one, killed (all ranks) once SRL's checkpoint-1 is complete
    first_log = tmp_path / "first.log"
    proc = launch(recipe, out, first_log, "--overwrite")
    rss = TreeRss(proc.pid)
    checkpoint = out / "srl" / "checkpoint-1" / "trainer_state.json"
    deadline = time.monotonic() + 600
    try:
        while not checkpoint.is_file():
            assert proc.poll() is None, tail(first_log)
            assert time.monotonic() < deadline, "no SRL checkpoint-1 within 10 minutes\n" + tail(first_log)
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        kill_tree(proc)
    first_peak = rss.stop()
    time.sleep(1.0)
    assert not (out / "srl" / "checkpoint-2").exists()  # no rank of the killed run went on
    assert not (out / "older-file.txt").exists()
    assert json.loads((out / "srl-run.json").read_text())["name"] == "two-ranks"
    assert (out / "sft" / "final" / ".srl-done").is_file()
    sft_state = json.loads((out / "sft" / "state.json").read_text())
    assert sft_state["world_size"] == 2 and [r["global_step"] for r in sft_state["ranks"]] == [1, 1]
    assert sft_state["ranks"][0]["trainable_sum"] == pytest.approx(sft_state["ranks"][1]["trainable_sum"], rel=1e-9)
    assert not (out / "srl" / "final").exists()

    incomplete = out / "srl" / "checkpoint-3"
    incomplete.mkdir()
    (incomplete / "adapter_model.safetensors").write_bytes(b"cut short")

    # 2) resume on 2 ranks: SFT skipped, SRL from checkpoint-1 to step 2, merged once by rank 0
    second_log = tmp_path / "second.log"
    proc = launch(recipe, out, second_log, "--resume")
    rss = TreeRss(proc.pid)
    try:
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    second_peak = rss.stop()
    assert rc == 0, tail(second_log)
    print(f"\npeak RSS of the launch tree: first run {first_peak / 2**30:.2f} GiB, resume {second_peak / 2**30:.2f} GiB")

    assert (out / "srl" / "incomplete-checkpoint-3").is_dir() and not incomplete.exists()
    state = json.loads((out / "srl" / "state.json").read_text())
    assert state["world_size"] == 2 and state["distributed_type"] == "MULTI_CPU" and Path(state["resumed_from"]).name == "checkpoint-1"
    rank0, rank1 = state["ranks"]
    assert rank0["global_step"] == rank1["global_step"] == 2
    assert rank0["dynamic_sampling_rounds"] == rank1["dynamic_sampling_rounds"] and len(rank0["dynamic_sampling_rounds"]) == 1
    assert rank0["trainable_sum"] == pytest.approx(rank1["trainable_sum"], rel=1e-9)
    every_row = read_metrics(out / "srl" / METRICS_FILE)
    rows = [r for r in every_row if "reward" in r and "loss" in r]  # the per-step rows (not the run summary)
    assert [r["step"] for r in rows] == [1, 2], every_row  # written by rank 0 only: one row per step, step 1 kept
    assert all("dynamic_sampling/signal_fraction" in r for r in rows)
    log_text = " ".join(second_log.read_text(errors="replace").split())  # rich wraps long lines
    assert log_text.count("sft: 1 steps (already finished)") == 2  # both ranks skipped the finished stage

    from safetensors import safe_open

    from srl_sdk.engines.hf_folder import load_causal_lm, load_tokenizer, resolve_hf_model

    final = out / "srl" / "final"
    single_process_layout = [".srl-done", "chat_template.jinja", "config.json", "generation_config.json",
                             "model.safetensors", "srl-prompt.txt", "tokenizer.json", "tokenizer_config.json"]  # what train() writes alone
    assert sorted(p.name for p in final.iterdir()) == single_process_layout
    assert sorted(p.name for p in (out / "sft" / "final").iterdir()) == single_process_layout
    assert not list((out / "srl").glob("*.tmp")) and not list((out / "srl").glob(".*aside*"))

    def shapes(folder: Path) -> dict[str, tuple]:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}

    assert shapes(final) == shapes(Path(resolve_hf_model("smollm2")))  # a plain merged model, no LoRA keys

    import torch

    tokenizer = load_tokenizer(final)
    model = load_causal_lm(final)
    prompt = tokenizer("What is 2 + 3?", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4 or tokenizer.eos_token_id in generated[0].tolist()


def test_rank_0_refusing_the_output_stops_every_rank(tmp_path) -> None:
    """Rank 0 refuses a folder that holds something else; rank 1 gets its error instead of hanging."""
    recipe = tmp_path / "two-ranks.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "notes.txt").write_text("not a run", encoding="utf-8")
    log = tmp_path / "refused.log"
    proc = launch(recipe, out, log)
    try:
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    text = " ".join(log.read_text(errors="replace").split())  # rich wraps long lines
    assert rc != 0, tail(log)
    assert "holds no srl training run" in text  # rank 0's own error
    assert "rank 0 failed while preparing" in text  # rank 1's, carrying rank 0's message
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written, nothing deleted

def test_accelerate_configs_fit_the_merge_and_carry_no_address() -> None:
    import yaml

    folder = Path(__file__).resolve().parents[1] / "training" / "accelerate"
    fsdp = yaml.safe_load((folder / "fsdp.yaml").read_text())
    assert fsdp["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    multi = yaml.safe_load((folder / "multi-node.yaml").read_text())
    assert "main_process_ip" not in multi and multi["num_machines"] == 2
    readme = (Path(__file__).resolve().parents[1] / "training" / "README.md").read_text()
    assert "--machine_rank 0" in readme and "--machine_rank 1" in readme and '--main_process_ip "$MAIN_IP"' in readme
