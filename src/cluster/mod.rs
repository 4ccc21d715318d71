//! Several stateless replicas on one PostgreSQL (issue 17): what each replica is (a random id,
//! new at every start), which one leads the background work ([`leader`]), and how a deployment
//! or a command reaches an agent connected to another replica ([`route`]).
//!
//! What is shared and what is per replica:
//! - shared, in the database: every row, sessions, the deploy queue (the waiting deployment row
//!   is the outbox), presence (`agents.replica_id` and `agents.lease_until`), the commands for
//!   agents elsewhere (`agent_commands`);
//! - per replica, in memory: the agent connections (the hub), the live broadcast of the
//!   deployments this replica's agents run, the sign-in rate limits and the handshake budget
//!   (each replica allows its configured rate: N replicas allow N times it in all);
//! - once across replicas, on the leader: the reaper, log retention, notification delivery and
//!   the agent-offline watch.
//!
//! On SQLite there is one process: it always leads, and nothing is routed elsewhere.

use std::time::Duration;

pub mod leader;
pub mod route;

/// How often a replica renews the leases of the agents it holds.
pub const LEASE_RENEW: Duration = Duration::from_secs(3);
/// How long a lease holds without a renewal (a little over 3 renewals).
pub const LEASE_MS: i64 = 10_000;

/// This replica's identity and leadership, in the app state.
pub struct Cluster {
    /// Random at every start (`r-` and 12 hex digits): a restarted replica is a new one, and
    /// the leases of its previous life run out on their own.
    pub replica_id: String,
    pub leader: leader::Leadership,
}

impl Cluster {
    /// One process on SQLite: it leads.
    pub fn single() -> Cluster {
        Cluster {
            replica_id: new_replica_id(),
            leader: leader::Leadership::always(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.is_leader()
    }
}

pub fn new_replica_id() -> String {
    format!("r-{}", hex::encode(rand::random::<[u8; 6]>()))
}
