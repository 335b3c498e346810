//! In-process broker: one MPMC channel per role queue, one for wake-ups.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use orch_core::{Role, RunId};

use crate::{Broker, Delivery, Dispatch, Error, Result};

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
        }
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
}
