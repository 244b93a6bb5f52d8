//! `claudeflare-server serve`: the proxy, API and dashboard, until SIGINT or SIGTERM.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use claudeflare_tower::BodyBudget;
use claudeflare_tower::Recorder;
use claudeflare_tower::StrategyHandle;
use claudeflare_tower::TokenRefresher;
use claudeflare_tower::{AccountPool, Balancer, BalancerService, Setting};
use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Access;
use crate::background::{self, UsageMap};
use crate::config::{self, Config, Overrides};
use crate::db;
use crate::health::Health;
use crate::logging::{self, LogHandle};
use crate::metrics::Metrics;
use crate::pricing::{self, Pricing};
use crate::recorder::{self, ServerRecorder};
use crate::refresher::ServerRefresher;
use crate::secrets::Cipher;
use crate::state::AppState;
use crate::store::{self, DbStore, Exchange, Ledger, Skipped};
use crate::threads::{HttpThreads, Limits};

/// HTTP threads at most, however many cores there are. Each has its own upstream connections,
/// so more threads than the traffic needs would mean more cold connections (a TLS handshake
/// each) for the same requests; four cores proxy tens of thousands of requests a second.
const MAX_HTTP_THREADS: usize = 4;

/// The settings that follow the configuration file while running.
struct Live {
    config: Setting<Config>,
    strategy: StrategyHandle,
    retry: Setting<claudeflare_tower::RetryConfig>,
    upstream: Setting<http::Uri>,
    body_limit: Setting<usize>,
    body_read_timeout: Setting<Duration>,
    /// Shared by every HTTP thread's balancer; its limit follows `max_buffered_body_bytes`.
    body_budget: BodyBudget,
    buffered_limit: Setting<usize>,
    /// The price catalogue in force, under the configuration's overrides in `pricing`.
    catalogue: Setting<Arc<pricing::Table>>,
    pricing: Setting<Pricing>,
    log: LogHandle,
}

impl Live {
    fn apply(&self, new: Config) {
        let old = self.config.get();
        if new.lb_strategy != old.lb_strategy
            || new.session_duration_ms != old.session_duration_ms
            || new.rotate_at_utilization != old.rotate_at_utilization
        {
            self.strategy.set(new.strategy());
        }
        self.retry.set(new.retry());
        self.upstream.set(new.upstream_uri());
        self.body_limit.set(new.max_request_body_bytes);
        self.body_read_timeout
            .set(Duration::from_millis(new.body_read_timeout_ms));
        self.buffered_limit.set(new.max_buffered_body_bytes);
        self.pricing.set(Pricing::new(
            self.catalogue.get().as_ref().clone(),
            &new.pricing,
        ));
        if new.log_level != old.log_level {
            self.log.set_level(new.log_level);
        }
        if new.port != old.port
            || new.host != old.host
            || new.log_format != old.log_format
            || new.max_connections != old.max_connections
            || new.header_read_timeout_ms != old.header_read_timeout_ms
            || new.shutdown_grace_seconds != old.shutdown_grace_seconds
            || new.allow_unauthenticated != old.allow_unauthenticated
            || new.spill_max_bytes != old.spill_max_bytes
        {
            tracing::warn!(
                "host, port, log_format, max_connections, header_read_timeout_ms, shutdown_grace_seconds, allow_unauthenticated and spill_max_bytes take effect at the next start"
            );
        }
        self.config.set(new);
        tracing::info!("configuration reloaded");
    }
}

/// Where the spill file goes: beside the SQLite file, or in the configuration folder.
fn spill_folder(url: &str, config_path: &Path) -> PathBuf {
    db::sqlite_path(url)
        .and_then(|file| file.parent().map(Path::to_path_buf))
        .filter(|folder| !folder.as_os_str().is_empty())
        .unwrap_or_else(|| config::config_folder(config_path).to_path_buf())
}

/// Run the server until SIGINT or SIGTERM.
pub async fn run(overrides: Overrides) -> anyhow::Result<()> {
    let (server, _flush) = Server::build(overrides).await?;
    server.serve().await
}

/// Everything the server is made of, built and not yet running.
struct Server {
    path: PathBuf,
    url: String,
    config: Config,
    overrides: Setting<Overrides>,
    live: Live,
    db: DatabaseConnection,
    cipher: Cipher,
    pool: AccountPool,
    store: Arc<DbStore>,
    ledger: Ledger,
    skipped: Arc<Skipped>,
    usage: Arc<UsageMap>,
    metrics: Arc<Metrics>,
    dropped: Arc<AtomicU64>,
    recorder: Arc<dyn Recorder>,
    queue: mpsc::Receiver<recorder::Queued>,
    refresher: Arc<dyn TokenRefresher>,
    health: Arc<Health>,
    access: Access,
}

impl Server {
    /// Read the configuration, start logging (the guard flushes it when dropped), open and
    /// migrate the database, and load the accounts.
    async fn build(overrides: Overrides) -> anyhow::Result<(Self, logging::LogFlush)> {
        let overrides = Setting::new(overrides);
        let path = config::config_path();
        config::ensure_file(&path)?;
        let upgraded = config::upgrade_file(&path)?;
        let config = config::load(&path, &overrides.get())?;
        let (log, flush) = logging::init(config.log_level, config.log_format);
        if !upgraded.is_empty() {
            tracing::info!("{}", config::upgrade_message(&path, &upgraded));
        }
        let url = config::database_url(&path);
        let db = db::open(&url).await?;
        tracing::info!(config = %path.display(), database = %db::redact(&url), "starting");
        let cipher = Cipher::load(config::config_folder(&path))?;
        db::accounts::seal_plaintext(&db, &cipher).await?;

        let metrics = Arc::new(Metrics::new());
        let mut ledger = Ledger::default();
        let store = Arc::new(DbStore::new(Arc::clone(&metrics)));
        let skipped = Arc::new(Skipped::default());
        let pool =
            store::load_pool(&db, &cipher, Arc::clone(&store), &mut ledger, &skipped).await?;
        let usage = Arc::new(UsageMap::default());
        usage.load(&db::accounts::all(&db).await?);
        let dropped = Arc::new(AtomicU64::new(0));
        let buffered_limit = Setting::new(config.max_buffered_body_bytes);
        let catalogue = pricing::load_in_force(&db).await?;
        let live = Live {
            config: Setting::new(config.clone()),
            strategy: StrategyHandle::new(config.strategy()),
            retry: Setting::new(config.retry()),
            upstream: Setting::new(config.upstream_uri()),
            body_limit: Setting::new(config.max_request_body_bytes),
            body_read_timeout: Setting::new(Duration::from_millis(config.body_read_timeout_ms)),
            body_budget: BodyBudget::new(buffered_limit.clone()),
            buffered_limit,
            catalogue: Setting::new(Arc::clone(&catalogue)),
            pricing: Setting::new(Pricing::new(catalogue, &config.pricing)),
            log,
        };
        let access = Access::new(live.config.clone());
        let (recorder, queue) = ServerRecorder::new(
            live.pricing.clone(),
            Arc::clone(&metrics),
            Arc::clone(&dropped),
        );
        let recorder = recorder.counting_spend(access.clone());
        let refresher = Arc::new(ServerRefresher::new(
            db.clone(),
            cipher.clone(),
            live.config.clone(),
            Arc::clone(&metrics),
        ));
        access.load(&db).await?;
        refuse_to_serve_everyone(&config, &access)?;
        let server = Self {
            access,
            path,
            url,
            config,
            overrides,
            live,
            db,
            cipher,
            pool,
            store,
            ledger,
            skipped,
            usage,
            metrics,
            dropped,
            recorder: Arc::new(recorder),
            queue,
            refresher,
            health: Arc::default(),
        };
        Ok((server, flush))
    }

    /// Serve until SIGINT or SIGTERM; then stop accepting, let requests in flight finish, stop
    /// the background work (the record writer stores what is queued) and return.
    async fn serve(self) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        // Cancelled when the grace period of a shutdown is over: streams still running then end
        // with an SSE error event and are recorded as cut by the shutdown.
        let cut = CancellationToken::new();
        let state = AppState {
            db: self.db.clone(),
            pool: self.pool.clone(),
            strategy: self.live.strategy.clone(),
            config: self.live.config.clone(),
            config_path: Arc::new(self.path.clone()),
            overrides: self.overrides.clone(),
            metrics: Arc::clone(&self.metrics),
            dropped: Arc::clone(&self.dropped),
            usage: Arc::clone(&self.usage),
            health: Arc::clone(&self.health),
            access: self.access.clone(),
            device_tries: Arc::default(),
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .min(MAX_HTTP_THREADS);
        let main = tokio::runtime::Handle::current();
        // One balancer per HTTP thread: the same accounts, settings and recorder, but an
        // upstream client each, so upstream connections stay on their thread.
        let apps = (0..threads)
            .map(|_| crate::app::app(state.clone(), self.balancer(&cut), main.clone()))
            .collect();
        let address = format!("{}:{}", self.config.host, self.config.port);
        let limits = Limits {
            header_read_timeout: Duration::from_millis(self.config.header_read_timeout_ms),
            max_connections: connection_limit(self.config.max_connections),
            grace: Duration::from_secs(self.config.shutdown_grace_seconds),
        };
        let (accounts, strategy) = (self.pool.len(), self.config.lb_strategy);
        let tls = match crate::tls::acceptor(&self.config) {
            Ok(tls) => tls,
            Err(error) => {
                return Err(error);
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        // Before listening: the configuration watcher must see the file as it is when the
        // first client can connect, or an edit made right then would go unnoticed.
        let tasks = self.spawn_background(&stop);
        let started = async {
            let listener = tokio::net::TcpListener::bind(&address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
            let local = listener.local_addr()?;
            let http = HttpThreads::start(listener, apps, limits, cut, tls)
                .context("cannot start serving")?;
            anyhow::Ok((http, local))
        };
        let (http, local) = match started.await {
            Ok(started) => started,
            Err(error) => {
                stop.cancel();
                tasks.close();
                tasks.wait().await;
                return Err(error);
            }
        };
        tracing::info!(accounts, %strategy, "listening on {scheme}://{local}");
        let served = http
            .run_until(async {
                shutdown_signal().await;
                tracing::info!("shutting down: no new connections; waiting for requests in flight");
            })
            .await;
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        served.context("the server failed")?;
        tracing::info!("stopped");
        Ok(())
    }

    fn balancer(&self, cut: &CancellationToken) -> BalancerService {
        Balancer::new(self.pool.clone())
            .shutdown(cut.clone())
            .strategy(self.live.strategy.clone())
            .recorder(Arc::clone(&self.recorder))
            .refresher(Arc::clone(&self.refresher) as Arc<dyn TokenRefresher>)
            .retry(self.live.retry.clone())
            .upstream_url(self.live.upstream.clone())
            .body_limit(self.live.body_limit.clone())
            .body_read_timeout(self.live.body_read_timeout.clone())
            .body_budget(self.live.body_budget.clone())
            .build()
    }

    /// The work beside serving, each task until `stop`: storing records and account state,
    /// following the database and the configuration file, refreshing tokens, polling usage,
    /// trimming the history, watching the database file.
    fn spawn_background(self, stop: &CancellationToken) -> TaskTracker {
        let tasks = TaskTracker::new();
        let db = &self.db;
        let spill = recorder::Spill::open(
            spill_folder(&self.url, &self.path).join(recorder::SPILL_FILE),
            self.config.spill_max_bytes,
        );
        let backlog = recorder::Backlog::new(
            self.queue,
            spill,
            Arc::clone(&self.dropped),
            Arc::clone(&self.metrics),
            Arc::clone(&self.health),
        );
        tasks.spawn(recorder::write_records(db.clone(), backlog, stop.clone()));
        tasks.spawn(store::exchange(
            Exchange {
                db: db.clone(),
                cipher: self.cipher,
                pool: self.pool.clone(),
                store: self.store,
                ledger: self.ledger,
                skipped: self.skipped,
            },
            stop.clone(),
        ));
        tasks.spawn(background::refresh_ahead(
            self.pool.clone(),
            self.refresher,
            stop.clone(),
        ));
        tasks.spawn(background::poll_usage(
            db.clone(),
            self.pool.clone(),
            self.live.config.clone(),
            self.usage,
            stop.clone(),
        ));
        tasks.spawn(recorder::trim_history(
            db.clone(),
            self.live.config.clone(),
            stop.clone(),
        ));
        tasks.spawn(self.access.run(db.clone(), stop.clone()));
        tasks.spawn(crate::health::watch_database(
            db::sqlite_path(&self.url),
            self.health,
            stop.clone(),
        ));
        let (catalogue, config, prices) = (
            self.live.catalogue.clone(),
            self.live.config.clone(),
            self.live.pricing.clone(),
        );
        let url_config = self.live.config.clone();
        tasks.spawn(pricing::keep_current(
            db.clone(),
            self.live.catalogue.get().as_ref().clone(),
            move || url_config.get().pricing_url.clone(),
            move |table: Arc<pricing::Table>| {
                prices.set(Pricing::new(Arc::clone(&table), &config.get().pricing));
                catalogue.set(table);
            },
            stop.clone(),
        ));
        let seen = stamp(&self.path);
        tasks.spawn(watch_config(
            self.path,
            seen,
            self.overrides,
            self.live,
            stop.clone(),
        ));
        tasks
    }
}

/// A server on a non-loopback address with no client key would let anyone who can reach it use
/// every account and change the settings: refuse, unless the user said so.
fn refuse_to_serve_everyone(config: &Config, access: &Access) -> anyhow::Result<()> {
    let loopback = config.host == "localhost"
        || config
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback || access.keys_exist() || config.allow_unauthenticated {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {} with no client key: anyone who can reach it could use every account. \
         Create a key first (`claudeflare-server keys add NAME --admin`), or set allow_unauthenticated \
         (CLAUDEFLARE_ALLOW_UNAUTHENTICATED=true) if something in front of it already checks who may connect",
        config.host
    )
}

/// File descriptors kept for everything but client connections: the database, the log, the
/// listener, token refreshes and usage polls.
const RESERVED_FDS: u64 = 64;

/// How many client connections to serve at once: `configured`, but no more than the process's
/// file-descriptor limit allows (each proxied connection can hold an upstream one too). The soft
/// limit is raised to the hard one first.
#[cfg(unix)]
fn connection_limit(configured: usize) -> usize {
    let available = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::debug!(%error, "could not read the file-descriptor limit");
            return configured;
        }
    };
    let affordable = usize::try_from(available.saturating_sub(RESERVED_FDS) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    if affordable < configured {
        tracing::warn!(
            max_connections = configured,
            file_descriptors = available,
            serving = affordable,
            "the file-descriptor limit allows fewer connections than max_connections; raise it (ulimit -n) to serve more"
        );
    }
    configured.min(affordable)
}

/// Elsewhere the configured limit is the limit.
#[cfg(not(unix))]
fn connection_limit(configured: usize) -> usize {
    configured
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reload the configuration when its file changes (checked every 500 ms); a file that does not
/// load keeps the previous settings.
/// `seen` is the file's stamp when the server read it (taken before it listens, so that an edit
/// made as soon as a client can connect is noticed).
async fn watch_config(
    path: PathBuf,
    mut seen: Option<(SystemTime, u64)>,
    overrides: Setting<Overrides>,
    live: Live,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match config::upgrade_file(&path) {
            Ok(keys) if !keys.is_empty() => {
                tracing::info!("{}", config::upgrade_message(&path, &keys));
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not rewrite the configuration file"),
        }
        match config::load(&path, &overrides.get()) {
            Ok(new) if new != *live.config.get() => live.apply(new),
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "the configuration file changed but cannot be used; keeping the previous settings")
            }
        }
    }
}
