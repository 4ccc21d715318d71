//! The appliance as a whole: open the data dir, build the state, run the background tasks and
//! the HTTP server, and stop them all cleanly on one shutdown signal.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agents::{hub::Hub, store as agent_store};
use crate::config::Config;
use crate::db::{Db, DbError, now_ms};
use crate::deploys::{logs::LogWriter, reaper, retention};
use crate::secrets::vault::{Vault, VaultError};
use crate::signing::{Signer, SigningError};

/// Everything a request handler or background task may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub vault: Arc<Vault>,
    /// Signs every frame sent to agents, and the agent downloads (issue 11).
    pub signer: Arc<Signer>,
    /// The served agent binaries' sha256 and signatures, computed once at start.
    pub agent_downloads: Arc<crate::agents::download::Signatures>,
    pub hub: Arc<Hub>,
    pub logs: LogWriter,
    pub shutdown: CancellationToken,
    /// Sign-in rate limits and GitHub logins in flight.
    pub auth: Arc<crate::users::AuthState>,
    /// The agent binaries served at `/agent/download/…`, read once (again only on change).
    pub binaries: Arc<crate::agents::download::Binaries>,
    /// Wakes the notification sender; its HTTP client (src/notify).
    pub notifier: Arc<crate::notify::worker::Notifier>,
    /// New agents' tokens between the form's POST and the page that shows them once.
    pub shown_once: Arc<crate::agents::shown_once::ShownOnce>,
    /// LOGS and ACTION requests sent to agents, waiting for their answers (issue 15).
    pub requests: Arc<crate::agents::requests::Requests>,
    /// This replica's id and whether it leads the background work (src/cluster).
    pub cluster: Arc<crate::cluster::Cluster>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error(
        "another Stagely process is serving from {0} (its lock file is held); stop it first or use another data_dir"
    )]
    Locked(String),
    #[error("cannot start the password threads: {0}")]
    Threads(std::io::Error),
    #[error("cannot read notify.smtp_extra_ca_file: {0}")]
    NotifyCa(std::io::Error),
    #[error("cannot listen on metrics.listen {addr}: {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open lock file {path}: {source}")]
    LockFile { path: String, source: std::io::Error },
}

/// Holds the data directory's lock for as long as the appliance runs.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Take the exclusive lock on `<data_dir>/stagely.lock`, failing at once if it is held.
    pub fn acquire(config: &Config) -> Result<DataDirLock, StartError> {
        crate::db::create_private_dir(&config.data_dir)?;
        let path = config.data_dir.join("stagely.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StartError::LockFile {
                path: path.display().to_string(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(_) => Err(StartError::Locked(config.data_dir.display().to_string())),
        }
    }
}

/// A started appliance: state plus its background tasks.
pub struct App {
    pub state: AppState,
    /// The one-time first-admin link, when the database has no users yet (also logged).
    pub setup_link: Option<String>,
    /// Where `/metrics` is served on its own (`metrics.listen`, as bound), if it is.
    pub metrics_addr: Option<std::net::SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    _lock: DataDirLock,
}

impl App {
    /// Open storage and vault (migrations first), then start the background tasks.
    /// Must run inside a tokio runtime.
    pub fn start(config: Config) -> Result<App, StartError> {
        Self::open(config)?.start()
    }

    /// The first half of `start`: lock the data dir, migrate, check the key. Nothing runs yet,
    /// so the caller can bind its listener in between (migrations come before the bind).
    pub fn open(config: Config) -> Result<Opened, StartError> {
        let lock = DataDirLock::acquire(&config)?;
        let db = Db::connect(config.database_url(), &config.db_path())?;
        let vault = Vault::open(&config.key_file, &db)?;
        let signer = Signer::open(&config.signing_key_path())?;
        match db.backend() {
            crate::db::Backend::Sqlite => db.write_blocking(agent_store::mark_all_offline)?,
            // Other replicas may hold agents: only expired leases are offline (issue 17).
            crate::db::Backend::Postgres => {
                db.write_blocking(|tx| agent_store::mark_expired_offline(tx, now_ms()).map(drop))?;
            }
        }
        Ok(Opened {
            config,
            db,
            vault,
            signer,
            lock,
        })
    }
}

/// Storage and vault open and checked; background tasks not yet started.
pub struct Opened {
    pub config: Config,
    db: Db,
    vault: Vault,
    signer: Signer,
    lock: DataDirLock,
}

impl Opened {
    /// Start the background tasks.
    pub fn start(self) -> Result<App, StartError> {
        let Opened {
            config,
            db,
            vault,
            signer,
            lock,
        } = self;
        let setup_link = crate::users::ensure_setup_link(&db, config.public_url.as_str(), now_ms())?;
        if let Some(link) = &setup_link {
            tracing::warn!(
                "no users yet: create the first admin at {link} (valid for 1 hour, works once; \
                 restart to get a new one)"
            );
        }
        let shutdown = CancellationToken::new();
        let replica_id = crate::cluster::new_replica_id();
        let cluster = Arc::new(crate::cluster::Cluster {
            leader: crate::cluster::leader::Leadership::start(&db, &replica_id, shutdown.clone()),
            replica_id,
        });
        tracing::info!(replica = %cluster.replica_id, store = %db.describe(), "replica started");
        let hub = Arc::new(Hub::new(
            now_ms(),
            config.agents.max_handshakes_per_sec,
            config.agents.max_failed_handshakes_per_ip_per_min,
        ));
        for hash in db.read_blocking(agent_store::live_token_hashes)? {
            hub.admission.remember(hash);
        }
        let (logs, log_task) = LogWriter::start(
            db.clone(),
            Duration::from_millis(config.deploys.log_flush_ms),
            hub.clone(),
            shutdown.clone(),
        );
        let auth = Arc::new(crate::users::AuthState::new(&config.auth).map_err(StartError::Threads)?);
        tracing::info!(fingerprint = %signer.fingerprint(), "signing agent frames with this key");
        let signer = Arc::new(signer);
        let agent_downloads = Arc::new(crate::agents::download::Signatures::new(&config, signer.clone()));
        // Hash and sign the agent binaries now, off the start path (one-shot, not per request).
        tokio::spawn({
            let downloads = agent_downloads.clone();
            async move {
                downloads.all().await;
            }
        });
        let notifier =
            Arc::new(crate::notify::worker::Notifier::new(&config.notify).map_err(StartError::NotifyCa)?);
        let state = AppState {
            config: Arc::new(config),
            db,
            vault: Arc::new(vault),
            signer,
            agent_downloads,
            hub,
            logs,
            shutdown,
            auth,
            binaries: Arc::default(),
            notifier,
            shown_once: Arc::default(),
            requests: Arc::default(),
            cluster,
        };
        let sweep_every = Duration::from_secs(state.config.deploys.agent_lost_timeout_secs.clamp(1, 10));
        let (metrics_addr, metrics_task) = match serve_metrics(&state)? {
            Some((addr, task)) => (Some(addr), Some(task)),
            None => (None, None),
        };
        let mut tasks = vec![
            log_task,
            tokio::spawn(reaper::run(state.clone(), sweep_every)),
            tokio::spawn(retention::run(state.clone())),
            tokio::spawn(persist_heartbeats(state.clone())),
            tokio::spawn(renew_leases(state.clone())),
            tokio::spawn(crate::notify::worker::listen(state.clone())),
            tokio::spawn(crate::runtime::ops::watch(state.clone())),
            tokio::spawn(crate::notify::worker::watch_agents(state.clone())),
            tokio::spawn(crate::notify::worker::deliver(state.clone())),
        ];
        tasks.extend(metrics_task);
        tasks.extend(crate::cluster::route::start(&state));
        Ok(App {
            state,
            setup_link,
            metrics_addr,
            tasks,
            _lock: lock,
        })
    }
}

impl App {
    /// Serve until the shutdown token fires: stop accepting, let in-flight requests finish,
    /// close agent sockets with a reason, drain the log writer.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let shutdown = self.state.shutdown.clone();
        let result = crate::web::serve(listener, self.state.clone(), shutdown.cancelled_owned()).await;
        // Agent connection tasks watch the same token; give them a moment to send their close.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.state.hub.online_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a background task ended abnormally");
            }
        }
        tracing::info!("stopped");
        result
    }
}

/// Bind `metrics.listen` (a start error when it cannot) and serve `/metrics` there until the
/// shutdown token fires. `None` when it is not set.
fn serve_metrics(state: &AppState) -> Result<Option<(std::net::SocketAddr, JoinHandle<()>)>, StartError> {
    let Some(addr) = state.config.metrics.listen_addr else {
        return Ok(None);
    };
    let bind = || -> std::io::Result<TcpListener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener)
    };
    let listener = bind().map_err(|source| StartError::MetricsListen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::MetricsListen { addr, source })?;
    tracing::info!(addr = %bound, "serving /metrics on its own address");
    let (router, limits) = (crate::metrics::router(state.clone()), state.config.http.clone());
    let shutdown = state.shutdown.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = crate::web::serve::serve(listener, router, &limits, shutdown.cancelled_owned()).await
        {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    });
    Ok(Some((bound, task)))
}

/// Heartbeats live in memory; write them down once per ping period, in one transaction.
async fn persist_heartbeats(state: AppState) {
    let period = Duration::from_secs(state.config.agents.ping_interval_secs);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.cancelled() => break,
        }
        let beats = state.hub.heartbeats();
        if beats.is_empty() {
            continue;
        }
        if let Err(e) = state
            .db
            .write(move |tx| agent_store::record_heartbeats(tx, &beats))
            .await
        {
            tracing::error!(error = %e, "cannot persist agent heartbeats");
        }
    }
}

/// Every [`crate::cluster::LEASE_RENEW`]: renew the leases of the agents this replica holds (one
/// statement), and on the leader mark offline those whose lease ran out (a dead replica's).
async fn renew_leases(state: AppState) {
    let mut tick = tokio::time::interval(crate::cluster::LEASE_RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.cancelled() => break,
        }
        let replica = state.cluster.replica_id.clone();
        let leader = state.cluster.is_leader();
        let renewed = state
            .db
            .write(move |tx| {
                let now = now_ms();
                agent_store::renew_leases(tx, &replica, now)?;
                if leader {
                    agent_store::mark_expired_offline(tx, now)?;
                }
                Ok::<_, DbError>(())
            })
            .await;
        if let Err(e) = renewed {
            tracing::error!(error = %e, "cannot renew the agents' leases");
        }
    }
}

/// Registers SIGTERM and SIGINT handlers now (so a signal that arrives right after start is
/// not lost) and returns a future that resolves when either arrives.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
