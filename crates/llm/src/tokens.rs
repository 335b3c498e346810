//! Token estimates made before a call: about four characters per token.
//!
//! These numbers are *estimates* for budgeting, progress output and the
//! `llm_request` event; they are not a tokenizer. The usage a provider
//! reports after a call is the truth and is what costs are computed from.
//! (The scripted provider reports these estimates as its usage, and says so.)

use crate::Request;

/// Fixed per-message overhead (role markers and separators), in tokens.
const PER_MESSAGE_OVERHEAD: u64 = 4;

/// Estimated tokens in `text`: characters / 4, rounded up (0 for "").
///
/// Counts Unicode scalar values, not bytes, so non-ASCII text is not
/// overestimated fourfold. A heuristic: real tokenizers differ by model.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Estimated input tokens of a whole request: system prompt, every message
/// (plus a small overhead each) and the tool definitions.
pub fn estimate_request(request: &Request) -> u64 {
    let system = estimate_tokens(&request.system);
    let messages: u64 = request
        .messages
        .iter()
        .map(|m| estimate_tokens(&m.content) + PER_MESSAGE_OVERHEAD)
        .sum();
    let tools: u64 = request
        .tools
        .iter()
        .map(|t| {
            estimate_tokens(&t.name)
                + estimate_tokens(&t.description)
                + estimate_tokens(&t.input_schema.to_string())
        })
        .sum();
    system + messages + tools
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CallMeta, Message, ToolSpec};
    use orch_core::{Role, RunId};

    #[test]
    fn rounds_up_and_counts_chars_not_bytes() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("a"), 1);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("ééé"), 1);
    }

    #[test]
    fn request_estimate_sums_system_messages_and_tools() {
        let req = Request {
            model: "m".into(),
            system: "x".repeat(40),
            messages: vec![Message::user("y".repeat(8)), Message::assistant("z")],
            max_tokens: 10,
            temperature: None,
            tools: vec![ToolSpec {
                name: "abcd".into(),
                description: "abcd".into(),
                input_schema: serde_json::json!({}),
            }],
            meta: CallMeta {
                run_id: RunId("r".into()),
                task_id: "t".into(),
                role: Role::TechLead,
                attempt: 1,
                round: 0,
                step: 0,
                expected: vec![],
                gate: None,
            },
        };
        // 10 + (2 + 4) + (1 + 4) + (1 + 1 + 1)
        assert_eq!(estimate_request(&req), 24);
    }
}
