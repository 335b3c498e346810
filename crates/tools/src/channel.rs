//! Agent channels, as tools see them: `post_message` and `read_messages`.
//!
//! A task reads the messages its run's agents posted before it started (the
//! [`ToolContext::inbox`], loaded by the engine from the event log) and posts
//! new ones into its outbox ([`ToolContext::posted`]). Like written
//! artifacts, posted messages only take effect when the attempt succeeds: the
//! engine records each as a `channel_message` event with the outcome, then
//! publishes it to live subscribers. A failed attempt posts nothing.
//!
//! Channel names are 1-64 of `[a-z0-9_-]` (`team`, `backend_engineer`), the
//! same rule the broker enforces.

use orch_core::Role;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::builtin::human_size;
use crate::{Error, Result, Tool, ToolContext, ToolOutput};

pub const POST_MESSAGE: &str = "post_message";
pub const READ_MESSAGES: &str = "read_messages";

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_NAME: usize = 64;
/// Longest message text, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// A message on a channel of the run. The broker has its own wire type; the
/// engine converts (this crate depends on `orch-core` only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelPost {
    pub channel: String,
    /// Role of the agent that posted it.
    pub from_role: Role,
    /// Task that posted it.
    pub task_id: String,
    pub text: String,
    /// Sequence number of its `channel_message` event; `None` until recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
}

/// Whether `name` is a valid channel name: 1 to [`MAX_CHANNEL_NAME`] of `[a-z0-9_-]`.
pub fn is_valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn invalid(tool: &str, message: String) -> Error {
    Error::InvalidInput {
        tool: tool.to_string(),
        message,
    }
}

/// The `channel` field, checked.
fn channel<'a>(tool: &str, input: &'a Value) -> Result<&'a str> {
    let name = match input.get("channel") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(invalid(tool, "field \"channel\" must be a string".into())),
        None => return Err(invalid(tool, "missing field \"channel\"".into())),
    };
    if !is_valid_channel(name) {
        return Err(invalid(
            tool,
            format!(
                "channel {name:?} must be 1-{MAX_CHANNEL_NAME} lowercase letters, digits, '_' or '-' (e.g. team, frontend_engineer)"
            ),
        ));
    }
    Ok(name)
}

/// `post_message {channel, text}`: post a message to the run's channel when
/// the task succeeds.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostMessage;

impl Tool for PostMessage {
    fn name(&self) -> &str {
        POST_MESSAGE
    }

    fn description(&self) -> &str {
        "Post a short message to a channel of the run (team, or a role's name), shown to the tasks that start later."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "channel": {"type": "string", "description": "channel name, e.g. team or frontend_engineer"},
                "text": {"type": "string", "description": "the message (plain text or Markdown, at most 4 KB)"}
            },
            "required": ["channel", "text"],
            "additionalProperties": false
        })
    }

    fn call(&self, ctx: &ToolContext, input: &Value) -> Result<ToolOutput> {
        let channel = channel(POST_MESSAGE, input)?;
        let text = match input.get("text") {
            Some(Value::String(s)) => s.trim(),
            Some(_) => {
                return Err(invalid(
                    POST_MESSAGE,
                    "field \"text\" must be a string".into(),
                ));
            }
            None => return Err(invalid(POST_MESSAGE, "missing field \"text\"".into())),
        };
        if text.is_empty() {
            return Err(invalid(POST_MESSAGE, "the message is empty".into()));
        }
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(invalid(
                POST_MESSAGE,
                format!(
                    "the message is {} bytes; the limit is {MAX_MESSAGE_BYTES}: keep messages short and put details in an artifact",
                    text.len()
                ),
            ));
        }
        ctx.post(ChannelPost {
            channel: channel.to_string(),
            from_role: ctx.role,
            task_id: ctx.task_id.clone(),
            text: text.to_string(),
            seq: None,
        });
        Ok(
            ToolOutput::new(format!("posted to {channel} ({})", human_size(text.len())))
                .with_data(json!({"channel": channel, "bytes": text.len()})),
        )
    }
}

/// `read_messages {channel}`: the messages posted on a channel of the run
/// before this task started, oldest first.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadMessages;

impl Tool for ReadMessages {
    fn name(&self) -> &str {
        READ_MESSAGES
    }

    fn description(&self) -> &str {
        "Read the messages posted on a channel of the run before this task started, oldest first."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "channel": {"type": "string", "description": "channel name, e.g. team"}
            },
            "required": ["channel"],
            "additionalProperties": false
        })
    }

    fn call(&self, ctx: &ToolContext, input: &Value) -> Result<ToolOutput> {
        let channel = channel(READ_MESSAGES, input)?;
        let found: Vec<&ChannelPost> = ctx.inbox.iter().filter(|m| m.channel == channel).collect();
        let text = if found.is_empty() {
            format!("no messages on {channel} yet")
        } else {
            found
                .iter()
                .map(|m| format!("--- {} (task {}) ---\n{}", m.from_role, m.task_id, m.text))
                .collect::<Vec<_>>()
                .join("\n")
        };
        Ok(ToolOutput::new(text).with_data(json!({"channel": channel, "count": found.len()})))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_core::RunId;

    fn post(channel: &str, role: Role, task: &str, text: &str) -> ChannelPost {
        ChannelPost {
            channel: channel.into(),
            from_role: role,
            task_id: task.into(),
            text: text.into(),
            seq: Some(1),
        }
    }

    fn ctx() -> ToolContext {
        ToolContext::new(RunId("r".into()), "backend", Role::BackendEngineer, vec![]).with_inbox(
            vec![
                post(
                    "team",
                    Role::TechLead,
                    "architecture",
                    "REST, JSON, port 8000",
                ),
                post(
                    "frontend_engineer",
                    Role::UxEngineer,
                    "ux_design",
                    "dark mode",
                ),
                post(
                    "team",
                    Role::DatabaseEngineer,
                    "database",
                    "ids are integers",
                ),
            ],
        )
    }

    #[test]
    fn post_message_fills_the_outbox_in_order() {
        let c = ctx();
        let out = PostMessage
            .call(
                &c,
                &json!({"channel": "team", "text": "  422 on bad input\n"}),
            )
            .unwrap();
        assert_eq!(out.text, "posted to team (16 B)");
        assert_eq!(out.data, json!({"channel": "team", "bytes": 16}));
        PostMessage
            .call(
                &c,
                &json!({"channel": "frontend_engineer", "text": "see /todos"}),
            )
            .unwrap();
        let posted = c.posted();
        assert_eq!(posted.len(), 2);
        assert_eq!(
            posted[0],
            ChannelPost {
                channel: "team".into(),
                from_role: Role::BackendEngineer,
                task_id: "backend".into(),
                text: "422 on bad input".into(),
                seq: None,
            }
        );
        assert_eq!(posted[1].channel, "frontend_engineer");
        assert_eq!(c.take_posted().len(), 2);
        assert!(c.posted().is_empty());
        assert_eq!(c.inbox.len(), 3, "posting does not touch the inbox");
    }

    #[test]
    fn post_message_refuses_bad_channels_and_texts() {
        let c = ctx();
        let long = "x".repeat(MAX_MESSAGE_BYTES + 1);
        let cases = [
            (json!({"channel": "Team", "text": "x"}), "lowercase"),
            (json!({"channel": "", "text": "x"}), "lowercase"),
            (json!({"channel": "a/b", "text": "x"}), "lowercase"),
            (json!({"channel": "x".repeat(65), "text": "x"}), "1-64"),
            (json!({"text": "x"}), "missing field \"channel\""),
            (json!({"channel": "team"}), "missing field \"text\""),
            (json!({"channel": "team", "text": 3}), "must be a string"),
            (json!({"channel": "team", "text": " \n"}), "empty"),
            (json!({"channel": "team", "text": long}), "limit is 4096"),
        ];
        for (input, want) in cases {
            let e = PostMessage.call(&c, &input).unwrap_err();
            assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
            assert!(e.to_string().contains(want), "{input}: {e}");
        }
        assert!(c.posted().is_empty());
        assert!(is_valid_channel(&"a-_9".repeat(16)));
    }

    #[test]
    fn read_messages_returns_earlier_messages_of_one_channel() {
        let c = ctx();
        let out = ReadMessages.call(&c, &json!({"channel": "team"})).unwrap();
        assert_eq!(
            out.text,
            "--- tech_lead (task architecture) ---\nREST, JSON, port 8000\n--- database_engineer (task database) ---\nids are integers"
        );
        assert_eq!(out.data, json!({"channel": "team", "count": 2}));
        // The task's own posts are not in the inbox: they are not posted yet.
        PostMessage
            .call(&c, &json!({"channel": "qa", "text": "x"}))
            .unwrap();
        let out = ReadMessages.call(&c, &json!({"channel": "qa"})).unwrap();
        assert_eq!(out.text, "no messages on qa yet");
        assert!(ReadMessages.call(&c, &json!({"channel": "A"})).is_err());
    }

    #[test]
    fn every_specialist_may_post_and_read_through_the_executor() {
        let ex = crate::ToolExecutor::default();
        for role in Role::SPECIALISTS {
            let c = ToolContext::new(RunId("r".into()), "t", role, vec![]);
            let out = ex.execute(
                role,
                POST_MESSAGE,
                &json!({"channel": "team", "text": "hi"}),
                &c,
            );
            assert!(out.result.is_ok(), "{role}: {:?}", out.result);
            assert_eq!(out.event.kind, orch_core::EventKind::ToolCall);
            assert_eq!(out.event.data["tool"], POST_MESSAGE);
            assert_eq!(c.posted()[0].from_role, role);
            let out = ex.execute(role, READ_MESSAGES, &json!({"channel": "team"}), &c);
            assert!(out.result.is_ok(), "{role}");
        }
        let c = ToolContext::new(RunId("r".into()), "plan", Role::Orchestrator, vec![]);
        let out = ex.execute(
            Role::Orchestrator,
            POST_MESSAGE,
            &json!({"channel": "team", "text": "hi"}),
            &c,
        );
        assert!(out.denied());
        assert_eq!(out.event.kind, orch_core::EventKind::ToolDenied);
        assert!(c.posted().is_empty(), "a denied post never runs");
        let narrowed = crate::ToolExecutor::new(
            crate::Registry::builtin(),
            crate::Allowlists::default().deny(Role::TechLead, POST_MESSAGE),
        );
        let c = ToolContext::new(RunId("r".into()), "architecture", Role::TechLead, vec![]);
        let out = narrowed.execute(
            Role::TechLead,
            POST_MESSAGE,
            &json!({"channel": "team", "text": "hi"}),
            &c,
        );
        assert!(out.denied());
    }
}
