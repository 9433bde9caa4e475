"""Expert trajectories from outside the SDK: a teacher model, and human-written solutions.

- `teacher`: rejection sampling from any OpenAI-compatible endpoint (`srl data generate --teacher`).
- `from_text`: human-written solutions cut into steps (`srl data from-text`).
- `rows`: the trajectory row both write (the JSONL `srl train` / `srl eval` read) and the export to
  TRL's stepwise-supervision format.

Nothing is imported here: the teacher needs the optional `openai` client, and `import srl_sdk.data`
must stay free for the light CLI.
"""
