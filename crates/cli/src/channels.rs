//! `orchestrator channels RUN`: the messages agents posted to a run's named
//! channels (seed feature 7.4). Every message is a `channel_message` event,
//! so the log is the complete record; `--follow` also prints new ones as
//! they come — live from Redis pub/sub in distributed mode when one channel
//! is named, with the event log as the net for anything pub/sub drops.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use orch_agents::ChannelPost;
use orch_core::{EventKind, RunId, RunStatus};
use orch_store::{EventQuery, Store};

use crate::commands::resolve_run;
use crate::config::Config;
use crate::{ChannelsArgs, render, wiring};

/// What makes a message the same whichever way it arrived (from the log,
/// with its event's number, or live, without).
fn key(m: &ChannelPost) -> (String, String, String) {
    (m.channel.clone(), m.task_id.clone(), m.text.clone())
}

/// `orchestrator channels RUN [--channel NAME] [--follow] [--json]`.
pub async fn channels(cfg: &Config, a: ChannelsArgs) -> Result<ExitCode> {
    if let Some(name) = &a.channel {
        orch_broker::check_channel_name(name)?;
    }
    let store = wiring::open_existing_store(cfg).await?;
    let id = resolve_run(&store, &a.run).await?;
    // Subscribe before reading the log: a message posted in between is
    // then in one or the other (printed once).
    let mut live = None;
    if a.follow
        && cfg.redis_url.is_some()
        && let Some(name) = &a.channel
    {
        let broker = wiring::open_broker(cfg).await?;
        let sub = broker.subscribe_channel(&id, name).await?;
        live = Some((broker, sub));
    }
    let mut printer = Printer {
        channel: a.channel.clone(),
        json: a.json,
        seen: HashSet::new(),
        after: 0,
        count: 0,
    };
    printer.read_log(&store, &id).await?;
    if !a.follow {
        if printer.count == 0 && !a.json {
            render::outln!(
                "no channel messages in run {id}{}",
                a.channel
                    .as_deref()
                    .map(|c| format!(" on {c}"))
                    .unwrap_or_default()
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let run = store.get_run(&id).await?;
        if run.status.is_terminal() || run.status == RunStatus::NeedsInput {
            printer.read_log(&store, &id).await?;
            eprintln!("run {id} is {}", run.status);
            return Ok(ExitCode::SUCCESS);
        }
        let poll = tokio::time::sleep(Duration::from_millis(500));
        match &mut live {
            Some((_, sub)) => {
                tokio::select! {
                    m = sub.next() => match m {
                        Some(m) => printer.show(ChannelPost {
                            channel: m.channel,
                            from_role: m.from_role,
                            task_id: m.task_id,
                            text: m.text,
                            seq: m.seq,
                        })?,
                        None => {
                            eprintln!("the live subscription ended; following the event log");
                            live = None;
                        }
                    },
                    _ = poll => printer.read_log(&store, &id).await?,
                }
            }
            None => {
                poll.await;
                printer.read_log(&store, &id).await?;
            }
        }
    }
}

struct Printer {
    channel: Option<String>,
    json: bool,
    seen: HashSet<(String, String, String)>,
    /// The last event read from the log.
    after: i64,
    count: usize,
}

impl Printer {
    async fn read_log(&mut self, store: &std::sync::Arc<dyn Store>, id: &RunId) -> Result<()> {
        let events = store
            .list_events(
                id,
                EventQuery {
                    after_seq: self.after,
                    limit: 0,
                    kind: Some(EventKind::ChannelMessage),
                },
            )
            .await?;
        for e in &events {
            self.after = self.after.max(e.seq);
            if let Some(m) = orch_engine::channel_post(e) {
                self.show(m)?;
            }
        }
        Ok(())
    }

    fn show(&mut self, m: ChannelPost) -> Result<()> {
        if self.channel.as_ref().is_some_and(|c| *c != m.channel) || !self.seen.insert(key(&m)) {
            return Ok(());
        }
        self.count += 1;
        if self.json {
            // One object per line, so that a follower's output can be piped.
            render::outln!("{}", serde_json::to_string(&m)?)?;
        } else {
            render::outln!(
                "#{:<12} {:<18} {:<24} {}",
                m.channel,
                m.from_role.as_str(),
                m.task_id,
                m.text.replace('\n', "\n    ")
            )?;
        }
        Ok(())
    }
}
