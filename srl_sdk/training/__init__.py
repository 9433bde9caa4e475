"""SRL training: expert data -> instances, rewards, SFT / SRL / RLVR / SRL->RLVR on TRL + PEFT.

Modules (heavy libraries are imported only by the modules that need them):
- data: trajectories from JSONL / GSM8K / Hugging Face datasets -> SRL, SFT and RLVR examples,
  drop report, split by problem (no torch)
- rewards: the SRL step reward and the RLVR outcome reward in TRL's reward-function shape (no torch)
- recipe: TrainRecipe, the YAML schema of a run (no torch)
- dynamic_sampling: SRLConfig + SRLTrainer (GRPO with dynamic sampling)
- trainers: `train(recipe, output_dir, resume=, overwrite=)`
- distributed: rank 0 does the run-folder work, the other ranks wait and share its answer; rank agreement
- reports: metrics.jsonl callback and the curves PNG
- evaluate: held-out before/after table
- commands: `srl train` and `srl eval`
"""
