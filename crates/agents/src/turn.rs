//! One task attempt: the agent turn loop.
//!
//! 1. Render the role's system prompt and the task message.
//! 2. Call the provider (step 0), with `llm_request` and then `llm_response`
//!    or `llm_error` events sent to the sink as they happen.
//! 3. Parse the tagged blocks; write each artifact block through the tool
//!    executor (`write_file` when it has a path, else `write_artifact`), so
//!    the role's allowlist applies and every write is audited, then post each
//!    `<message>` block with `post_message` the same way. A denied write or
//!    post is dropped; an invalid one (a bad channel name) is a problem.
//! 4. Review tasks: take the verdict from the review artifact, else from the
//!    whole answer.
//! 5. Validate with [`orch_core::validate::check_output`]. On problems, one
//!    repair turn (step 1) shows the model its answer and the problems; if
//!    that answer is still unusable the attempt fails with
//!    [`AgentError::InvalidOutput`], which is retryable.
//!
//! Semantic validation rules are described to the model but not judged here.

use std::collections::BTreeMap;
use std::time::Instant;

use orch_core::elision::{self, ArtifactKey, Elided};
use orch_core::{EventKind, NewArtifact, NewEvent, Usage, Verdict, validate::check_output};
use orch_llm::{CallMeta, Message, Provider, Request, Response, StopReason};
use orch_tools::builtin::{WRITE_ARTIFACT, WRITE_FILE, human_size};
use orch_tools::channel::POST_MESSAGE;
use orch_tools::{ChannelPost, ToolContext};
use serde_json::json;

use crate::parse::{ParsedBlock, parse_answer};
use crate::{AgentError, AgentFailure, AgentOutput, Agents, EventSink, TaskInput, prompts};

/// Output token limit of every call.
pub(crate) const MAX_TOKENS: u32 = 8192;
/// Repair turns after the first answer.
const MAX_REPAIRS: u32 = 1;

pub(crate) async fn run(
    agents: &Agents,
    input: TaskInput<'_>,
    provider: &dyn Provider,
    sink: &dyn EventSink,
) -> Result<AgentOutput, AgentFailure> {
    let task = input.task;
    let mut events: Vec<NewEvent> = Vec::new();
    let mut usage = Usage::default();
    let fail = |error: AgentError, events: Vec<NewEvent>, usage: Usage| AgentFailure {
        error,
        events,
        usage,
    };
    let system = match agents.system_prompt(task.role) {
        Ok(s) => s,
        Err(e) => return Err(fail(e, events, usage)),
    };
    let user = match agents.task_message_apart(&input) {
        Ok(s) => s,
        Err(e) => return Err(fail(e, events, usage)),
    };
    let mut messages = vec![Message::user(user.full(input.upstream))];
    // The first message as the events store it: without the quoted artifacts.
    let stored = Stored {
        first: &user.stored,
        elided: user
            .quotes
            .iter()
            .map(|&(at, i)| Elided {
                message: 0,
                at,
                artifact: ArtifactKey::of(&input.upstream[i]),
            })
            .collect(),
    };
    let mut step = 0;
    loop {
        let request = Request {
            model: input.model.to_string(),
            system: system.clone(),
            messages: messages.clone(),
            max_tokens: MAX_TOKENS,
            temperature: None,
            tools: Vec::new(),
            meta: CallMeta {
                run_id: input.run.id.clone(),
                task_id: task.id.clone(),
                role: task.role,
                attempt: task.attempt,
                round: task.round,
                step,
                expected: task.expected.clone(),
                gate: task.gate,
            },
        };
        let response = match call(&request, &stored, provider, sink).await {
            Ok(r) => r,
            Err(e) => return Err(fail(AgentError::Provider(e), events, usage)),
        };
        add_usage(&mut usage, &response, input.model);

        let checked = check_answer(agents, &input, &response);
        events.extend(checked.events);
        match checked.result {
            Ok(Accepted {
                artifacts,
                verdict,
                messages,
            }) => {
                let mut summary = summarize(&artifacts, verdict.as_ref(), step);
                match messages.len() {
                    0 => {}
                    1 => summary.push_str(", posted 1 message"),
                    n => summary.push_str(&format!(", posted {n} messages")),
                }
                return Ok(AgentOutput {
                    artifacts,
                    verdict,
                    summary,
                    events,
                    messages,
                    usage,
                });
            }
            Err(problems) => {
                tracing::info!(task = %task.id, step, ?problems, "agent output rejected");
                events.push(
                    NewEvent::task(
                        EventKind::ValidationFailed,
                        &task.id,
                        format!("output of step {step} rejected: {}", problems.join("; ")),
                    )
                    .with_data(json!({
                        "step": step,
                        "attempt": task.attempt,
                        "problems": problems,
                        "repair": step < MAX_REPAIRS,
                    })),
                );
                if step >= MAX_REPAIRS {
                    return Err(fail(AgentError::InvalidOutput { problems }, events, usage));
                }
                let repair = match prompts::repair_message(&agents.env, task, &problems) {
                    Ok(s) => s,
                    Err(e) => return Err(fail(e, events, usage)),
                };
                messages.push(Message::assistant(response.text));
                messages.push(Message::user(repair));
                step += 1;
            }
        }
    }
}

/// `provider/model`, with a `[scripted]` mark if the name does not say it already.
fn label(provider: &dyn Provider, model: &str) -> String {
    let l = format!("{}/{}", provider.name(), model);
    if provider.is_scripted() && !l.contains("scripted") {
        format!("{l} [scripted]")
    } else {
        l
    }
}

/// How an `llm_request` event stores the conversation's first message (the
/// task message): without the upstream artifacts it quotes, which reading
/// the event puts back ([`orch_core::elision`]).
struct Stored<'a> {
    first: &'a str,
    elided: Vec<Elided>,
}

/// One provider call with its events.
async fn call(
    request: &Request,
    stored: &Stored<'_>,
    provider: &dyn Provider,
    sink: &dyn EventSink,
) -> orch_llm::Result<Response> {
    let meta = &request.meta;
    let scripted = provider.is_scripted();
    let estimate = orch_llm::tokens::estimate_request(request);
    let messages: Vec<serde_json::Value> = request
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| match i {
            // A `Message` like the one sent, so that it serializes alike.
            0 if !stored.elided.is_empty() => json!(Message {
                role: m.role,
                content: stored.first.to_owned(),
            }),
            _ => json!(m),
        })
        .collect();
    let mut data = json!({
        "provider": provider.name(),
        "scripted": scripted,
        "model": request.model,
        "step": meta.step,
        "attempt": meta.attempt,
        "round": meta.round,
        "max_tokens": request.max_tokens,
        "system": request.system,
        "messages": messages,
        "estimated_tokens": estimate,
    });
    if !stored.elided.is_empty() {
        data[elision::FIELD] = json!(stored.elided);
    }
    sink.emit(vec![
        NewEvent::task(
            EventKind::LlmRequest,
            &meta.task_id,
            format!(
                "LLM request to {} (step {}, est. {estimate} tokens)",
                label(provider, &request.model),
                meta.step
            ),
        )
        .with_data(data),
    ])
    .await;
    let started = Instant::now();
    let result = provider.complete(request).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let event = match &result {
        Ok(r) => {
            let model = if r.model.is_empty() {
                &request.model
            } else {
                &r.model
            };
            NewEvent::task(
                EventKind::LlmResponse,
                &meta.task_id,
                format!(
                    "LLM response from {}: {} in + {} out tokens in {latency_ms} ms",
                    label(provider, model),
                    r.usage.input_tokens,
                    r.usage.output_tokens
                ),
            )
            .with_data(json!({
                "provider": provider.name(),
                "scripted": scripted,
                "model": model,
                "step": meta.step,
                "attempt": meta.attempt,
                "text": r.text,
                "usage": r.usage,
                "cost_usd": orch_llm::cost_usd(model, &r.usage),
                "latency_ms": latency_ms,
                "stop_reason": r.stop_reason,
            }))
        }
        Err(e) => NewEvent::task(
            EventKind::LlmError,
            &meta.task_id,
            format!(
                "LLM error from {}: {e}{}",
                label(provider, &request.model),
                if e.is_retryable() { " (retryable)" } else { "" }
            ),
        )
        .with_data(json!({
            "provider": provider.name(),
            "scripted": scripted,
            "model": request.model,
            "step": meta.step,
            "attempt": meta.attempt,
            "error": e.to_string(),
            "retryable": e.is_retryable(),
            "latency_ms": latency_ms,
        })),
    };
    sink.emit(vec![event]).await;
    result
}

fn add_usage(total: &mut Usage, r: &Response, requested_model: &str) {
    let model = if orch_llm::price_of(&r.model).is_some() {
        &r.model
    } else {
        requested_model
    };
    total.input_tokens += r.usage.input_tokens as i64;
    total.output_tokens += r.usage.output_tokens as i64;
    total.cache_read_tokens += r.usage.cache_read_tokens as i64;
    total.cache_write_tokens += r.usage.cache_write_tokens as i64;
    total.cost_usd += orch_llm::cost_usd(model, &r.usage);
}

/// What an acceptable answer produced.
struct Accepted {
    artifacts: Vec<NewArtifact>,
    verdict: Option<Verdict>,
    /// Messages posted, in order.
    messages: Vec<ChannelPost>,
}

struct Checked {
    result: Result<Accepted, Vec<String>>,
    /// Tool audit events of this answer.
    events: Vec<NewEvent>,
}

/// Parse, write through the tools, take the verdict, validate.
fn check_answer(agents: &Agents, input: &TaskInput<'_>, response: &Response) -> Checked {
    let task = input.task;
    let text = &response.text;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut events = Vec::new();
    if response.stop_reason == StopReason::MaxTokens {
        problems.push(format!(
            "the answer was cut off at the output limit ({MAX_TOKENS} tokens): be more concise"
        ));
    }
    let answer = match parse_answer(text) {
        Ok(a) => a,
        Err(e) => {
            problems.push(format!("the output format is broken at {e}"));
            return Checked {
                result: Err(problems),
                events,
            };
        }
    };
    // Only an answer without any block may be one untagged document.
    let blocks = if answer.artifacts.is_empty() && answer.messages.is_empty() {
        untagged_fallback(input, text)
    } else {
        answer.artifacts
    };

    let ctx = ToolContext::new(
        input.run.id.clone(),
        task.id.clone(),
        task.role,
        input.upstream.to_vec(),
    )
    .with_inbox(input.messages.to_vec());
    for block in &blocks {
        let kind = block
            .kind
            .clone()
            .or_else(|| {
                task.expected
                    .iter()
                    .find(|e| e.name == block.name)
                    .map(|e| e.kind.clone())
            })
            .unwrap_or_else(|| {
                if block.path.is_some() {
                    "code".into()
                } else {
                    "document".into()
                }
            });
        let (tool, call_input) = match &block.path {
            Some(path) => (
                WRITE_FILE,
                json!({"path": path, "content": unfence(&block.content), "artifact": block.name, "kind": kind}),
            ),
            None => (
                WRITE_ARTIFACT,
                json!({"name": block.name, "kind": kind, "content": block.content}),
            ),
        };
        let exec = agents.tools.execute(task.role, tool, &call_input, &ctx);
        let what = match &block.path {
            Some(p) => format!("block {:?} (path {p:?}, line {})", block.name, block.line),
            None => format!("block {:?} (line {})", block.name, block.line),
        };
        match &exec.result {
            Ok(_) => {}
            Err(_) if exec.denied() => notes.push(format!(
                "{what} was refused: the {} role may not use {tool}{}",
                task.role,
                if tool == WRITE_FILE {
                    " (write documents without a path attribute)"
                } else {
                    ""
                }
            )),
            Err(e) => problems.push(format!("{what}: {e}")),
        }
        events.push(exec.event);
    }
    for message in &answer.messages {
        let call_input = json!({"channel": message.channel, "text": message.text});
        let exec = agents
            .tools
            .execute(task.role, POST_MESSAGE, &call_input, &ctx);
        let what = format!(
            "message to channel {:?} (line {})",
            message.channel, message.line
        );
        match &exec.result {
            Ok(_) => {}
            Err(_) if exec.denied() => notes.push(format!(
                "{what} was refused: the {} role may not post messages",
                task.role
            )),
            Err(e) => problems.push(format!("{what}: {e}")),
        }
        events.push(exec.event);
    }
    let artifacts = ctx.take_written();
    let messages = ctx.take_posted();

    let mut verdict = None;
    let mut verdict_error = None;
    if task.gate.is_some() {
        let review_names: Vec<&str> = task
            .expected
            .iter()
            .filter(|e| e.kind == "review")
            .map(|e| e.name.as_str())
            .collect();
        let mut candidates: Vec<&str> = artifacts
            .iter()
            .filter(|a| review_names.contains(&a.name.as_str()) || a.kind == "review")
            .map(|a| a.content.as_str())
            .collect();
        candidates.push(text);
        for c in candidates {
            match Verdict::parse(c) {
                Ok(v) => {
                    verdict = Some(v);
                    break;
                }
                Err(e) => {
                    verdict_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }

    if let Err(found) = check_output(task, &artifacts, verdict.as_ref()) {
        for p in found {
            match (&verdict_error, p.starts_with("no review verdict")) {
                (Some(e), true) => problems.push(format!("{p} ({e})")),
                _ => problems.push(p),
            }
        }
    }
    if problems.is_empty() {
        Checked {
            result: Ok(Accepted {
                artifacts,
                verdict,
                messages,
            }),
            events,
        }
    } else {
        problems.extend(notes);
        Checked {
            result: Err(problems),
            events,
        }
    }
}

/// An answer without any block, for a task that expects exactly one document:
/// the whole answer is taken as that document (models sometimes forget the
/// tags; the content is what matters, and validation still applies).
fn untagged_fallback(input: &TaskInput<'_>, text: &str) -> Vec<ParsedBlock> {
    match input.task.expected.as_slice() {
        [only] if only.kind != "code" && !text.trim().is_empty() => vec![ParsedBlock {
            name: only.name.clone(),
            kind: Some(only.kind.clone()),
            path: None,
            content: text.trim().to_string(),
            line: 1,
        }],
        _ => Vec::new(),
    }
}

/// A file's content without one Markdown code fence wrapped around all of it
/// (models often fence files although the format says not to).
fn unfence(content: &str) -> String {
    let trimmed = content.trim();
    if let Some(rest) = trimmed.strip_prefix("```")
        && let Some((_lang, body)) = rest.split_once('\n')
        && let Some(body) = body.strip_suffix("```")
        && !body.contains("\n```")
    {
        return body.to_string();
    }
    content.to_string()
}

/// `wrote requirements (1.2 KB)`, `wrote backend_code: 4 files (9.8 KB)`,
/// `verdict FAIL: 2 finding(s)`; `, after a repair turn` when step > 0.
fn summarize(artifacts: &[NewArtifact], verdict: Option<&Verdict>, step: u32) -> String {
    let mut s = match verdict {
        Some(v) => format!(
            "verdict {}: {} finding(s)",
            if v.passed() { "PASS" } else { "FAIL" },
            v.findings.len()
        ),
        None => {
            let mut by_name: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
            let mut order = Vec::new();
            for a in artifacts {
                let e = by_name.entry(a.name.as_str()).or_insert_with(|| {
                    order.push(a.name.as_str());
                    (0, 0, 0)
                });
                e.0 += usize::from(a.path.is_some());
                e.1 += a.content.len();
                e.2 += 1;
            }
            let parts: Vec<String> = order
                .iter()
                .map(|n| {
                    let (files, bytes, _) = by_name[n];
                    if files > 1 {
                        format!("{n}: {files} files ({})", human_size(bytes))
                    } else {
                        format!("{n} ({})", human_size(bytes))
                    }
                })
                .collect();
            if parts.is_empty() {
                "wrote nothing".to_string()
            } else {
                format!("wrote {}", parts.join(", "))
            }
        }
    };
    if step > 0 {
        s.push_str(", after a repair turn");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfence_strips_one_wrapping_fence_only() {
        assert_eq!(unfence("```python\nprint(1)\n```"), "print(1)\n");
        assert_eq!(unfence("\n```\nx\n```\n"), "x\n");
        let two = "```a\nx\n```\ntext\n```b\ny\n```";
        assert_eq!(unfence(two), two);
        assert_eq!(unfence("plain\n"), "plain\n");
    }

    #[test]
    fn summaries_are_one_line() {
        let a = |name: &str, path: Option<&str>, n: usize| NewArtifact {
            name: name.into(),
            kind: "code".into(),
            path: path.map(Into::into),
            content: "x".repeat(n),
            metadata: json!({}),
        };
        assert_eq!(
            summarize(&[a("requirements", None, 1229)], None, 0),
            "wrote requirements (1.2 KB)"
        );
        assert_eq!(
            summarize(
                &[
                    a("backend_code", Some("a"), 100),
                    a("backend_code", Some("b"), 100)
                ],
                None,
                1
            ),
            "wrote backend_code: 2 files (200 B), after a repair turn"
        );
        let v = Verdict {
            verdict: orch_core::VerdictKind::Fail,
            findings: vec!["a".into(), "b".into()],
        };
        assert_eq!(summarize(&[], Some(&v), 0), "verdict FAIL: 2 finding(s)");
    }
}
