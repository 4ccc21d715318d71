//! The hub: which agents are connected right now, and the live deployments they run.
//!
//! A map from agent id to its connection's outbound queue (the seed's `Map<AgentID,
//! *Connection>`), and a map from deployment id to its live context (the agent it belongs to,
//! the masker for its secret values, the broadcast channel live viewers subscribe to).
//! Locks are held only for map operations, never across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::broadcast;

use super::mailbox::{self, TrySendError};
use crate::deploys::LiveEvent;
use stagely_protocol::mask::Masker;

/// Frames queued for one agent connection.
#[derive(Debug)]
pub enum Outbound {
    /// A JSON text frame. DEPLOY frames hold secret values: wiped when dropped.
    Text(zeroize::Zeroizing<String>),
    /// Close the connection with this reason.
    Close(u16, &'static str),
}

/// Live log events buffered per viewer before a slow viewer starts losing lines (it is told so).
const LIVE_BUFFER: usize = 1024;

struct Conn {
    conn_id: u64,
    environment_id: i64,
    tx: mailbox::Sender<Outbound>,
    last_seen: Arc<AtomicI64>,
}

/// A connection's handle on itself, given at registration.
pub struct Registration {
    pub conn_id: u64,
    pub rx: mailbox::Receiver<Outbound>,
    pub last_seen: Arc<AtomicI64>,
}

/// A deployment in flight.
pub struct ActiveDeploy {
    pub agent_id: i64,
    pub masker: Masker,
    pub live: broadcast::Sender<LiveEvent>,
    /// Lines and bytes of its log stored so far, against the per-deployment caps.
    pub log: crate::deploys::limits::LogBudget,
}

/// Something changed that dashboards show.
#[derive(Debug, Clone)]
pub enum HubEvent {
    AgentOnline {
        agent_id: i64,
    },
    AgentOffline {
        agent_id: i64,
    },
    DeploymentChanged {
        deployment_id: i64,
        environment_id: i64,
    },
    /// What runs in the environment, or its drift, changed (src/runtime).
    RuntimeChanged {
        environment_id: i64,
    },
}

pub struct Hub {
    conns: Mutex<HashMap<i64, Conn>>,
    deploys: Mutex<HashMap<i64, Arc<ActiveDeploy>>>,
    /// When each agent was last seen disconnecting (ms), for the `agent_lost` timeout.
    disconnected_at: Mutex<HashMap<i64, i64>>,
    next_conn_id: AtomicU64,
    started_at_ms: i64,
    events: broadcast::Sender<HubEvent>,
    handshakes: Mutex<TokenBucket>,
    /// The checks in front of the handshake budget (known tokens, per-address failures).
    pub admission: super::admission::Admission,
}

impl Hub {
    pub fn new(now_ms: i64, max_handshakes_per_sec: u32, failed_handshakes_per_ip_per_min: u32) -> Hub {
        Hub {
            conns: Mutex::new(HashMap::new()),
            deploys: Mutex::new(HashMap::new()),
            disconnected_at: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
            started_at_ms: now_ms,
            events: broadcast::channel(256).0,
            handshakes: Mutex::new(TokenBucket::new(max_handshakes_per_sec)),
            admission: super::admission::Admission::new(failed_handshakes_per_ip_per_min),
        }
    }

    /// Take one handshake slot; `false` means "too many right now, come back later". Only for
    /// requests whose agent token has been checked ([`super::admission`]).
    pub fn admit_handshake(&self) -> bool {
        lock(&self.handshakes).take(Instant::now())
    }

    /// Register a live connection, replacing (and closing) an older one of the same agent.
    pub fn register(&self, agent_id: i64, environment_id: i64, now_ms: i64) -> Registration {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mailbox::mailbox();
        let last_seen = Arc::new(AtomicI64::new(now_ms));
        let conn = Conn {
            conn_id,
            environment_id,
            tx,
            last_seen: last_seen.clone(),
        };
        if let Some(old) = lock(&self.conns).insert(agent_id, conn) {
            // Best effort: when the old queue is full the reason is lost, but `old` (its only
            // sender) is dropped here, so the old connection still ends once its queue drains.
            let _ = old
                .tx
                .try_send(Outbound::Close(1008, stagely_protocol::CLOSE_REPLACED));
        }
        lock(&self.disconnected_at).remove(&agent_id);
        // Sending fails only when nobody listens to hub events, which is fine.
        let _ = self.events.send(HubEvent::AgentOnline { agent_id });
        Registration {
            conn_id,
            rx,
            last_seen,
        }
    }

    /// Remove a connection, unless a newer one has already replaced it. True when removed.
    pub fn unregister(&self, agent_id: i64, conn_id: u64, now_ms: i64) -> bool {
        let mut conns = lock(&self.conns);
        if conns.get(&agent_id).is_some_and(|c| c.conn_id == conn_id) {
            conns.remove(&agent_id);
            drop(conns);
            lock(&self.disconnected_at).insert(agent_id, now_ms);
            // Sending fails only when nobody listens to hub events, which is fine.
            let _ = self.events.send(HubEvent::AgentOffline { agent_id });
            return true;
        }
        false
    }

    pub fn is_online(&self, agent_id: i64) -> bool {
        lock(&self.conns).contains_key(&agent_id)
    }

    /// Last frame seen from a connected agent (ms).
    pub fn last_seen(&self, agent_id: i64) -> Option<i64> {
        lock(&self.conns)
            .get(&agent_id)
            .map(|c| c.last_seen.load(Ordering::Relaxed))
    }

    /// `(agent id, last seen ms)` for every connected agent.
    pub fn heartbeats(&self) -> Vec<(i64, i64)> {
        lock(&self.conns)
            .iter()
            .map(|(id, c)| (*id, c.last_seen.load(Ordering::Relaxed)))
            .collect()
    }

    /// The environments of the agents connected here (the routing sweep, src/cluster/route.rs).
    pub fn environments(&self) -> std::collections::HashSet<i64> {
        lock(&self.conns).values().map(|c| c.environment_id).collect()
    }

    /// The environment of a connected agent.
    pub fn environment_of(&self, agent_id: i64) -> Option<i64> {
        lock(&self.conns).get(&agent_id).map(|c| c.environment_id)
    }

    pub fn online_count(&self) -> usize {
        lock(&self.conns).len()
    }

    /// Queue a frame for an agent, but only if it is connected *and* serves `environment_id`:
    /// the hub never routes one environment's messages to another's agent.
    pub fn send_to(&self, agent_id: i64, environment_id: i64, frame: Outbound) -> Result<(), SendError> {
        let conns = lock(&self.conns);
        let conn = conns.get(&agent_id).ok_or(SendError::Offline)?;
        if conn.environment_id != environment_id {
            return Err(SendError::WrongEnvironment);
        }
        conn.tx.try_send(frame).map_err(|e| match e {
            TrySendError::Full => SendError::Busy,
            TrySendError::Closed => SendError::Offline,
        })
    }

    /// Queue a frame the agent can do without (a cumulative LOG_ACK: the next one covers it),
    /// like [`Hub::send_to`] but only while half the connection's mailbox stays free, so such
    /// frames never crowd out a DEPLOY.
    pub fn send_droppable(
        &self,
        agent_id: i64,
        environment_id: i64,
        frame: Outbound,
    ) -> Result<(), SendError> {
        let conns = lock(&self.conns);
        let conn = conns.get(&agent_id).ok_or(SendError::Offline)?;
        if conn.environment_id != environment_id {
            return Err(SendError::WrongEnvironment);
        }
        conn.tx
            .try_send_leaving(frame, mailbox::CAPACITY / 2)
            .map_err(|e| match e {
                TrySendError::Full => SendError::Busy,
                TrySendError::Closed => SendError::Offline,
            })
    }

    /// Ask a connection to close (revoked agent, deleted environment).
    pub fn disconnect(&self, agent_id: i64, code: u16, reason: &'static str) {
        let mut conns = lock(&self.conns);
        let full = conns
            .get(&agent_id)
            .is_some_and(|conn| conn.tx.try_send(Outbound::Close(code, reason)) == Err(TrySendError::Full));
        if full {
            // A revoked agent must not stay connected because its queue is backed up: dropping
            // the connection's only sender ends it once the queue drains.
            conns.remove(&agent_id);
        }
    }

    /// Close every connection (shutdown).
    pub fn disconnect_all(&self, code: u16, reason: &'static str) {
        for conn in lock(&self.conns).values() {
            // At shutdown every connection also sees the shutdown signal and closes itself; the
            // queued Close only carries the reason.
            let _ = conn.tx.try_send(Outbound::Close(code, reason));
        }
    }

    /// When an agent went away, or when this process started if it has not been seen since.
    pub fn offline_since(&self, agent_id: i64) -> Option<i64> {
        if self.is_online(agent_id) {
            return None;
        }
        Some(
            lock(&self.disconnected_at)
                .get(&agent_id)
                .copied()
                .unwrap_or(self.started_at_ms),
        )
    }

    pub fn start_deploy(&self, deployment_id: i64, agent_id: i64, masker: Masker) -> Arc<ActiveDeploy> {
        let active = Arc::new(ActiveDeploy {
            agent_id,
            masker,
            live: broadcast::channel(LIVE_BUFFER).0,
            log: Default::default(),
        });
        lock(&self.deploys).insert(deployment_id, active.clone());
        active
    }

    pub fn active_deploy(&self, deployment_id: i64) -> Option<Arc<ActiveDeploy>> {
        lock(&self.deploys).get(&deployment_id).cloned()
    }

    pub fn end_deploy(&self, deployment_id: i64) -> Option<Arc<ActiveDeploy>> {
        lock(&self.deploys).remove(&deployment_id)
    }

    /// Live events of a running deployment; `None` once it has finished (read the store instead).
    pub fn subscribe(&self, deployment_id: i64) -> Option<broadcast::Receiver<LiveEvent>> {
        lock(&self.deploys)
            .get(&deployment_id)
            .map(|d| d.live.subscribe())
    }

    pub fn events(&self) -> broadcast::Receiver<HubEvent> {
        self.events.subscribe()
    }

    pub fn publish(&self, event: HubEvent) {
        // Sending fails only when nobody listens to hub events, which is fine.
        let _ = self.events.send(event);
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    Offline,
    WrongEnvironment,
    Busy,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A token bucket refilled continuously at `rate` per second, holding at most `rate` tokens.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_caps_bursts_and_refills() {
        let mut b = TokenBucket::new(10);
        let t0 = Instant::now();
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 10);
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(150)));
    }

    #[test]
    fn routing_is_scoped_to_the_environment_and_newest_connection() {
        let hub = Hub::new(0, 10, 60);
        let mut first = hub.register(1, 100, 0);
        let mut second = hub.register(1, 100, 0);
        assert!(matches!(
            first.rx.try_recv(),
            Some(Some(Outbound::Close(1008, _)))
        ));
        assert_eq!(
            hub.send_to(1, 200, Outbound::Close(1000, "x")),
            Err(SendError::WrongEnvironment)
        );
        assert_eq!(
            hub.send_to(2, 100, Outbound::Close(1000, "x")),
            Err(SendError::Offline)
        );
        hub.send_to(1, 100, Outbound::Close(1000, "x")).unwrap();
        assert!(matches!(second.rx.try_recv(), Some(Some(_))));
        assert!(
            !hub.unregister(1, first.conn_id, 5),
            "an old connection must not unregister the new one"
        );
        assert!(hub.is_online(1));
        assert!(hub.unregister(1, second.conn_id, 5));
        assert_eq!(hub.offline_since(1), Some(5));
    }

    #[test]
    fn a_backed_up_connection_is_still_disconnected() {
        let hub = Hub::new(0, 10, 60);
        let mut reg = hub.register(1, 100, 0);
        while hub.send_to(1, 100, Outbound::Close(1000, "x")).is_ok() {}
        hub.disconnect(1, 1008, stagely_protocol::CLOSE_REVOKED);
        assert!(!hub.is_online(1));
        // The queued frames drain, then the connection's mailbox reports it is over.
        let mut drained = 0;
        while let Some(Some(_)) = reg.rx.try_recv() {
            drained += 1;
        }
        assert_eq!(drained, super::super::mailbox::CAPACITY);
        assert!(matches!(reg.rx.try_recv(), Some(None)));
    }
}
