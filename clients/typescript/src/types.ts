/**
 * The objects the server sends, field for field the Python models in `srl_sdk/core/steps.py`
 * (`Step`, `CheckResult`, `Confidence`, `Trace`) and `srl_sdk/store` (`TraceSummary`). Names stay
 * snake_case, exactly as they are on the wire, so a step logged here and one read in Python match.
 * test/python-parity.test.ts compares these field lists with the Python models.
 */

/** Why a run ended (the Python `FinishReason`, in its order). */
export const FINISH_REASONS = [
  'final_answer', // a step carried the final-answer marker
  'max_steps', // the step budget ran out
  'repeated_step', // the model repeated an earlier step (it is looping)
  'length', // the token budget ran out inside a step
  'stop', // free mode: the model ended its text without an answer marker
  'cancelled', // the caller or the client went away
  'timeout', // the wall-clock budget ran out
  'error', // the engine failed
  'interrupted', // the server stopped mid-run (its worker died, or it was killed); never resumed
] as const;

export type FinishReason = (typeof FINISH_REASONS)[number];

/** One verification of a claim inside a step, e.g. that `48/2 = 24` really holds. */
export interface CheckResult {
  /** Which check produced this, e.g. `"arithmetic"`. */
  name: string;
  /** The text that was checked. */
  claim: string;
  /** `true` / `false`, or `null` when it could not be decided. */
  passed: boolean | null;
  detail: string;
}

/** How sure the model was of the tokens it sampled for a step (natural-log probabilities). */
export interface Confidence {
  mean_logprob: number;
  min_logprob: number;
}

/** One reasoning step: a private thought, then the public action the model commits to. */
export interface Step {
  /** 1-based position in the trace. */
  index: number;
  thought: string;
  action: string;
  /** `false` when the model's reply did not follow the step format (it is kept anyway). */
  format_ok: boolean;
  is_final: boolean;
  answer: string | null;
  /** `"given"` for steps the caller supplied in `steps`, `"model"` for generated ones. */
  source: 'model' | 'given';
  tokens: number;
  confidence: Confidence | null;
  latency_s: number | null;
  checks: CheckResult[];
}

/** A whole solution attempt: the problem, every step, the answer and how it ended. */
export interface Trace {
  id: string;
  problem: string;
  steps: Step[];
  answer: string | null;
  /** `null` while the run is still going. */
  finish_reason: FinishReason | null;
  mode: 'stepwise' | 'free';
  model: string;
  engine: string;
  /** ISO 8601 timestamp. */
  created_at: string;
  duration_s: number | null;
  usage: Record<string, number>;
  request: Record<string, unknown>;
  meta: Record<string, unknown>;
}

/** One row of `GET /v1/traces` (newest first): the Python `TraceSummary`. */
export interface TraceSummary {
  id: string;
  created_at: string;
  problem: string;
  answer: string | null;
  finish_reason: FinishReason | null;
  n_steps: number;
  model: string;
  engine: string;
}

export interface TraceList {
  object: 'list';
  data: TraceSummary[];
  limit: number;
  offset: number;
}

/** A piece of text as it is generated (sent only when the request asks for `tokens: true`). */
export interface TokenDelta {
  step_index: number;
  phase: 'thought' | 'action';
  text: string;
  logprob: number | null;
}

/** Body of `POST /v1/reason`, as the server validates it (unknown fields are refused with 422). */
export interface ReasonParams {
  problem: string;
  /** Given steps to continue from (a person's edit, say); the model goes on after them. */
  steps?: string[];
  mode?: 'stepwise' | 'free';
  limits?: {
    max_steps?: number;
    max_thought_tokens?: number;
    max_action_tokens?: number;
    max_total_tokens?: number;
    timeout_s?: number;
  };
  sampling?: {
    temperature?: number;
    top_p?: number;
    top_k?: number;
    seed?: number;
  };
  /** Verify arithmetic claims in each step (server default: on). */
  checks?: boolean;
  /** Also send `token` events (read them with `stream.events()`). */
  tokens?: boolean;
  /** Optional; must name the served model (`GET /v1/models`). */
  model?: string;
}

/** What `stream.events()` yields. */
export type ReasonEvent =
  | { type: 'step'; step: Step }
  | { type: 'token'; token: TokenDelta }
  | { type: 'done'; trace: Trace };

type Exactly<T, K extends readonly (keyof T)[]> = Exclude<keyof T, K[number]> extends never ? K : never;

function fields<T>() {
  return <const K extends readonly (keyof T)[]>(keys: Exactly<T, K>): K => keys;
}

/** The field names of {@link Step}, in the Python model's order (compile-time checked to be complete). */
export const STEP_FIELDS = fields<Step>()([
  'index', 'thought', 'action', 'format_ok', 'is_final', 'answer', 'source', 'tokens', 'confidence',
  'latency_s', 'checks',
]);

/** The field names of {@link Trace}, in the Python model's order. */
export const TRACE_FIELDS = fields<Trace>()([
  'id', 'problem', 'steps', 'answer', 'finish_reason', 'mode', 'model', 'engine', 'created_at', 'duration_s',
  'usage', 'request', 'meta',
]);

/** The field names of {@link CheckResult}. */
export const CHECK_RESULT_FIELDS = fields<CheckResult>()(['name', 'claim', 'passed', 'detail']);

/** The field names of {@link Confidence}. */
export const CONFIDENCE_FIELDS = fields<Confidence>()(['mean_logprob', 'min_logprob']);

/** The field names of {@link TraceSummary}. */
export const TRACE_SUMMARY_FIELDS = fields<TraceSummary>()([
  'id', 'created_at', 'problem', 'answer', 'finish_reason', 'n_steps', 'model', 'engine',
]);
