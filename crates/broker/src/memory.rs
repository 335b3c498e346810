//! In-process broker: one MPMC channel per role queue, one for wake-ups, and
//! a broadcast per run channel that has subscribers.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::{Role, RunId};
use tokio::sync::broadcast;

use crate::{
    Broker, ChannelMessage, ChannelSubscription, Delivery, Dispatch, Error, Result,
    SubscriptionSource, check_channel_name,
};

/// Subscribers of one channel of one run.
type ChannelSenders = HashMap<(RunId, String), broadcast::Sender<ChannelMessage>>;

/// The embedded default: queues live in memory and die with the process,
/// which loses nothing because the store re-creates them (see the crate docs).
#[derive(Debug)]
pub struct MemoryBroker {
    /// One unbounded channel per role; workers of a role share the receiver.
    queues: HashMap<
        Role,
        (
            async_channel::Sender<Dispatch>,
            async_channel::Receiver<Dispatch>,
        ),
    >,
    /// Wake-ups for the engine loop (run ids whose state changed).
    wakes: (async_channel::Sender<RunId>, async_channel::Receiver<RunId>),
    /// One broadcast per (run, channel) that has (or recently had)
    /// subscribers. An entry is created by a subscription and removed once a
    /// publish or a subscription finds it without receivers, so messages to
    /// channels nobody listens to cost nothing and are not kept. A plain
    /// mutex: held only to look up, insert or send, never across an `.await`.
    channels: Mutex<ChannelSenders>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    pub fn new() -> Self {
        let queues = Role::ALL
            .into_iter()
            .map(|r| (r, async_channel::unbounded()))
            .collect();
        MemoryBroker {
            queues,
            wakes: async_channel::unbounded(),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// How many messages a channel subscriber may fall behind before it
    /// skips the oldest (see [`ChannelSubscription::missed`]).
    pub const CHANNEL_CAPACITY: usize = 1024;

    fn channels(&self) -> MutexGuard<'_, ChannelSenders> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue(
        &self,
        role: Role,
    ) -> &(
        async_channel::Sender<Dispatch>,
        async_channel::Receiver<Dispatch>,
    ) {
        &self.queues[&role]
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn backend(&self) -> &'static str {
        "in-process"
    }

    async fn publish(&self, dispatch: &Dispatch) -> Result<()> {
        self.queue(dispatch.role)
            .0
            .send(dispatch.clone())
            .await
            .map_err(|_| Error::Closed)
    }

    async fn receive(
        &self,
        role: Role,
        _consumer: &str,
        timeout: Duration,
    ) -> Result<Option<Delivery>> {
        let rx = &self.queue(role).1;
        if let Ok(d) = rx.try_recv() {
            return Ok(Some(Delivery {
                dispatch: d,
                receipt: String::new(),
            }));
        }
        if timeout.is_zero() {
            // Not even a timer: it would fire at the timer's next tick (~1 ms).
            return Ok(None);
        }
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Ok(d)) => Ok(Some(Delivery {
                dispatch: d,
                receipt: String::new(),
            })),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Ok(None),
        }
    }

    async fn ack(&self, _delivery: &Delivery) -> Result<()> {
        Ok(())
    }

    async fn depth(&self, role: Role) -> Result<u64> {
        Ok(self.queue(role).1.len() as u64)
    }

    async fn wake(&self, run_id: &RunId) -> Result<()> {
        self.wakes
            .0
            .send(run_id.clone())
            .await
            .map_err(|_| Error::Closed)
    }

    async fn wakes(&self, timeout: Duration) -> Result<Vec<RunId>> {
        let rx = &self.wakes.1;
        let mut out = Vec::new();
        if rx.is_empty() {
            match tokio::time::timeout(timeout, rx.recv()).await {
                Ok(Ok(id)) => out.push(id),
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => return Ok(out),
            }
        }
        while let Ok(id) = rx.try_recv() {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }
    async fn publish_channel(&self, msg: &ChannelMessage) -> Result<()> {
        check_channel_name(&msg.channel)?;
        let key = (msg.run_id.clone(), msg.channel.clone());
        let mut channels = self.channels();
        if let Some(tx) = channels.get(&key)
            && tx.send(msg.clone()).is_err()
        {
            // Every subscriber is gone.
            channels.remove(&key);
        }
        Ok(())
    }

    async fn subscribe_channel(
        &self,
        run_id: &RunId,
        channel: &str,
    ) -> Result<ChannelSubscription> {
        check_channel_name(channel)?;
        let mut channels = self.channels();
        channels.retain(|_, tx| tx.receiver_count() > 0);
        let rx = channels
            .entry((run_id.clone(), channel.to_string()))
            .or_insert_with(|| broadcast::channel(Self::CHANNEL_CAPACITY).0)
            .subscribe();
        Ok(ChannelSubscription::new(
            run_id,
            channel,
            SubscriptionSource::Memory(rx),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: String) -> ChannelMessage {
        ChannelMessage {
            run_id: RunId("r".into()),
            channel: "team".into(),
            from_role: Role::TechLead,
            task_id: "architecture".into(),
            text,
            seq: None,
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_skips_the_oldest_and_says_so() {
        let b = MemoryBroker::new();
        let mut sub = b
            .subscribe_channel(&RunId("r".into()), "team")
            .await
            .unwrap();
        let n = MemoryBroker::CHANNEL_CAPACITY + 5;
        for i in 0..n {
            b.publish_channel(&msg(i.to_string())).await.unwrap();
        }
        assert_eq!(sub.next().await.unwrap().text, "5");
        assert_eq!(sub.missed(), 5);
    }

    #[tokio::test]
    async fn channels_without_subscribers_are_forgotten() {
        let b = MemoryBroker::new();
        let sub = b
            .subscribe_channel(&RunId("r".into()), "team")
            .await
            .unwrap();
        assert_eq!(b.channels().len(), 1);
        drop(sub);
        b.publish_channel(&msg("x".into())).await.unwrap();
        assert!(b.channels().is_empty());
        // Publishing to a channel nobody ever subscribed to keeps nothing.
        b.publish_channel(&msg("y".into())).await.unwrap();
        assert!(b.channels().is_empty());
    }
}
