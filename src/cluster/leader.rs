//! Leadership: the background work that must run once across replicas (the reaper, log
//! retention, notification delivery, the agent-offline watch) runs only on the replica holding
//! the PostgreSQL session advisory lock [`LEADER_LOCK`], on a connection of its own.
//!
//! A replica that does not lead tries `pg_try_advisory_lock` every [`RETRY`]; the leader checks
//! its connection as often and stops leading the moment that fails. When the leader dies its
//! session ends, the server releases the lock, and another replica takes it at its next try.
//! (A leader cut off from the database may still believe it leads until its next check, up to
//! [`RETRY`]; the work it does then goes through the same write lock as everyone's, and every
//! such task tolerates running twice.) On SQLite the one process always leads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::Db;

/// The leader's session advisory lock (ASCII "STAGELYL").
pub const LEADER_LOCK: i64 = 0x5354_4147_454C_594C;
/// How often a follower tries to lead, and a leader checks its connection.
pub const RETRY: Duration = Duration::from_secs(2);

/// Whether this replica leads now. Cheap to read.
#[derive(Clone)]
pub struct Leadership {
    leader: Arc<AtomicBool>,
}

impl Leadership {
    /// The one process on SQLite.
    pub fn always() -> Leadership {
        Leadership {
            leader: Arc::new(AtomicBool::new(true)),
        }
    }

    /// On PostgreSQL: a thread with its own connection competes for [`LEADER_LOCK`] until
    /// `shutdown` (then it lets go: the connection closes). On SQLite: [`Leadership::always`].
    pub fn start(db: &Db, replica_id: &str, shutdown: CancellationToken) -> Leadership {
        if db.backend() != crate::db::Backend::Postgres {
            return Leadership::always();
        }
        let me = Leadership {
            leader: Arc::new(AtomicBool::new(false)),
        };
        let (db, flag, replica) = (db.clone(), me.leader.clone(), replica_id.to_owned());
        let spawned = std::thread::Builder::new()
            .name("stagely-leader".into())
            .spawn(move || compete(&db, &flag, &replica, &shutdown));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the leadership thread: this replica never leads");
        }
        me
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }
}

fn compete(db: &Db, leader: &AtomicBool, replica: &str, shutdown: &CancellationToken) {
    let mut conn: Option<postgres::Client> = None;
    while !shutdown.is_cancelled() {
        let leading = leader.load(Ordering::Acquire);
        let now_leading = match conn.as_mut() {
            None => {
                match db.dedicated_connection() {
                    Some(Ok(c)) => conn = Some(c),
                    Some(Err(e)) => tracing::warn!(error = %e, "leadership: cannot connect to PostgreSQL"),
                    None => return,
                }
                false
            }
            Some(c) if leading => match c.simple_query("SELECT 1") {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "leadership: the leader's connection failed");
                    conn = None;
                    false
                }
            },
            Some(c) => match c.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]) {
                Ok(row) => row.get::<_, bool>(0),
                Err(e) => {
                    tracing::warn!(error = %e, "leadership: cannot try the lock");
                    conn = None;
                    false
                }
            },
        };
        if now_leading != leading {
            leader.store(now_leading, Ordering::Release);
            if now_leading {
                tracing::info!(replica, "this replica leads the background work now");
            } else {
                tracing::warn!(replica, "this replica no longer leads the background work");
            }
        }
        if conn.is_some() && now_leading == leading {
            // Sleep in short steps so a shutdown lets go of the lock at once.
            let mut slept = Duration::ZERO;
            while slept < RETRY && !shutdown.is_cancelled() {
                std::thread::sleep(Duration::from_millis(100));
                slept += Duration::from_millis(100);
            }
        }
    }
    leader.store(false, Ordering::Release);
    drop(conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn sqlite_always_leads() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        assert!(Leadership::start(&db, "r-1", CancellationToken::new()).is_leader());
    }

    #[test]
    fn one_replica_leads_and_another_takes_over_when_it_goes() {
        let Some(url) = crate::db::postgres::test_database("leader") else {
            return;
        };
        let (a_db, b_db) = (Db::open_postgres(&url).unwrap(), Db::open_postgres(&url).unwrap());
        let (a_stop, b_stop) = (CancellationToken::new(), CancellationToken::new());
        let a = Leadership::start(&a_db, "r-a", a_stop.clone());
        let b = Leadership::start(&b_db, "r-b", b_stop.clone());
        wait_for("a leader", || a.is_leader() || b.is_leader());
        std::thread::sleep(RETRY * 2);
        assert!(a.is_leader() != b.is_leader(), "exactly one leads");
        let (first, first_stop, second) = if a.is_leader() {
            (&a, &a_stop, &b)
        } else {
            (&b, &b_stop, &a)
        };
        // The leader stops (its connection closes): the other takes over.
        first_stop.cancel();
        wait_for("the follower to take over", || second.is_leader());
        wait_for("the old leader to let go", || !first.is_leader());

        // The new leader's connection is killed from the server side: it notices, stops
        // leading, and a third replica (or itself, reconnected) takes the lock again.
        let c_stop = CancellationToken::new();
        let c = Leadership::start(&a_db, "r-c", c_stop.clone());
        std::thread::sleep(RETRY * 2);
        assert!(second.is_leader() && !c.is_leader(), "the leader keeps leading");
        let admin = Db::open_postgres(&url).unwrap();
        let killed: i64 = admin
            .read_blocking(|conn| {
                conn.query_row(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(l.pid) FROM pg_locks l
                     WHERE l.locktype = 'advisory' AND l.granted
                       AND (CAST(l.classid AS BIGINT) << 32) | CAST(l.objid AS BIGINT) = ?1) t",
                    [LEADER_LOCK],
                    |r| r.get(0),
                )
                .map_err(crate::db::DbError::from)
            })
            .unwrap();
        assert_eq!(killed, 1, "the leader's session held the lock");
        wait_for("a leader again", || {
            second.is_leader() != c.is_leader() && (second.is_leader() || c.is_leader())
        });
        b_stop.cancel();
        c_stop.cancel();
    }
}
