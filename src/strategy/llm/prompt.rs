//! What the model is told: the program (system message) and, for each proposal, the current
//! train.py, the recent results, the noise floor and the reply format (last user message).

use std::fmt::Write as _;

use super::{ProposalContext, RecentResult};

/// Results shown to the model, newest last.
pub const MAX_RECENT: usize = 20;

/// The built-in program, in the spirit of autoresearch's program.md, used when the campaign
/// gives none.
pub const DEFAULT_PROGRAM: &str = "\
You are an autonomous ML researcher improving a training script, train.py, one experiment at a time.

Each experiment runs train.py once on a remote GPU worker for a fixed time budget and reports
val_bpb (validation bits per byte). Lower is better. The experiment is paid for, so propose only
changes you expect to help, and never a change that merely repeats an earlier one.

Rules:
- Change only train.py. The data preparation, tokenizer and evaluation are fixed: do not touch
  code that loads data or computes val_bpb, and keep the final `val_bpb: <number>` line printed.
- Keep the script runnable: valid Python, no new dependencies, no downloads, same time budget.
- Prefer one idea per experiment: a hyperparameter (learning rates, depth, width, batch size,
  warmup/warmdown, weight decay), an architectural tweak, or an optimizer detail.
- Do not change seeds to chase noise: an improvement smaller than the noise floor is not an
  improvement.
- Learn from the results: a change that was discarded or crashed should not be repeated; build on
  what was kept. Simpler code at equal val_bpb is better.
";

/// The reply format, repeated in every request (LiteLLM drops `response_format`, so the format
/// is asked for in words and checked on arrival).
const REPLY_FORMAT: &str = r#"Reply with one JSON object and nothing else:
{"description": "<one line: what you changed and why>", "changes": [{"old": "<text copied exactly from train.py>", "new": "<its replacement>"}]}
Each "old" must occur exactly once in the train.py above (include surrounding text if needed); changes are applied in order.
If the change is too large for find/replace, reply instead with the complete new train.py in one ```python block, with a one-line description before it."#;

/// The last user message: everything the model needs to propose the next experiment.
pub fn user_message(ctx: &ProposalContext<'_>) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "The current train.py (the best version kept so far), in full:\n\n```python\n{}{}```\n",
        ctx.base_train_py,
        if ctx.base_train_py.ends_with('\n') {
            ""
        } else {
            "\n"
        }
    );
    let recent = &ctx.recent[ctx.recent.len().saturating_sub(MAX_RECENT)..];
    if recent.is_empty() {
        text.push_str("No experiments have finished yet.\n\n");
    } else {
        text.push_str("Recent experiments, oldest first (status: keep = became the current train.py, discard = not better, crash = no val_bpb):\n\n| val_bpb | status | description |\n|---|---|---|\n");
        for r in recent {
            write_result(&mut text, r);
        }
        text.push('\n');
    }
    let _ = writeln!(
        text,
        "Noise floor: {}. A change is kept only if it lowers val_bpb by more than this.\n",
        ctx.noise_floor
    );
    text.push_str(REPLY_FORMAT);
    text
}

fn write_result(text: &mut String, r: &RecentResult) {
    let value = r
        .val_bpb
        .filter(|v| v.is_finite())
        .map_or_else(|| "-".to_string(), |v| format!("{v:.6}"));
    let description: String = r
        .description
        .chars()
        .map(|c| if c == '|' || c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let _ = writeln!(
        text,
        "| {value} | {} | {description} |",
        r.decision.as_str()
    );
}

/// The message that re-asks after a refused reply.
pub fn retry_message(reason: &str) -> String {
    format!(
        "Your last reply could not be used, so nothing was run: {reason}\nPropose again, starting from the train.py above.\n\n{REPLY_FORMAT}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::Decision;

    #[test]
    fn the_user_message_has_the_script_results_floor_and_format() {
        let recent: Vec<RecentResult> = (0..30)
            .map(|i| RecentResult {
                description: format!("try {i} | pipes"),
                val_bpb: (i % 3 != 0).then_some(1.0 + f64::from(i) / 1000.0),
                decision: if i % 3 == 0 {
                    Decision::Crash
                } else {
                    Decision::Discard
                },
            })
            .collect();
        let tried = |_: &str| false;
        let ctx = ProposalContext {
            base_train_py: "DEPTH = 8\nprint('val_bpb: 1.0')",
            recent: &recent,
            noise_floor: 0.002,
            tried: &tried,
        };
        let text = user_message(&ctx);
        assert!(text.contains("```python\nDEPTH = 8\nprint('val_bpb: 1.0')\n```"));
        assert!(
            !text.contains("try 9 "),
            "only the last {MAX_RECENT} results"
        );
        assert!(
            text.contains("| 1.029000 | discard | try 29   pipes |"),
            "{text}"
        );
        assert!(text.contains("| - | crash | try 27   pipes |"));
        assert!(text.contains("Noise floor: 0.002."));
        assert!(text.contains("\"changes\": [{\"old\""));
    }
}
