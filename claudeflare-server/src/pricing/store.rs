//! Installed catalogues: kept in the database (so every instance and every later start use the
//! same prices), read from a file or a URL.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ConnectionTrait, EntityTrait, QueryOrder, QuerySelect,
};

use super::{Catalogue, Table};
use crate::db::DbError;
use crate::db::entities::pricing_catalogue;

/// A catalogue larger than this is not a price list.
const MAX_BYTES: usize = 4 * 1024 * 1024;

/// Where the catalogue in force came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// Built into this version.
    BuiltIn,
    /// Installed into the database.
    Installed(Installed),
}

/// An installation of a catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    /// Its row; grows with each installation.
    pub id: i64,
    /// When.
    pub installed_at: DateTime<Utc>,
    /// The file or URL it was read from.
    pub from: String,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::BuiltIn => f.write_str("built in"),
            Origin::Installed(installed) => write!(
                f,
                "installed {} from {}",
                installed.installed_at.format("%Y-%m-%d %H:%M UTC"),
                installed.from
            ),
        }
    }
}

/// The id of the newest installed catalogue, if any: cheap, for noticing a new one.
pub async fn newest_id(db: &impl ConnectionTrait) -> Result<Option<i64>, DbError> {
    Ok(pricing_catalogue::Entity::find()
        .select_only()
        .column(pricing_catalogue::Column::Id)
        .order_by_desc(pricing_catalogue::Column::Id)
        .into_tuple::<i64>()
        .one(db)
        .await?)
}

/// The catalogue in force: the newest installed one, unless this version's built-in catalogue
/// is more recent (by `as_of`), so an upgrade brings its prices along.
pub async fn load_in_force(db: &impl ConnectionTrait) -> Result<Arc<Table>, DbError> {
    let Some(row) = pricing_catalogue::Entity::find()
        .order_by_desc(pricing_catalogue::Column::Id)
        .one(db)
        .await?
    else {
        return Ok(Table::built_in());
    };
    let built_in = Table::built_in();
    let installed = match Catalogue::parse(&row.catalogue) {
        Ok(catalogue) => catalogue,
        Err(error) => {
            tracing::warn!(
                id = row.id,
                from = row.origin,
                %error,
                "the installed price catalogue cannot be read by this version; the built-in one is in force"
            );
            return Ok(built_in);
        }
    };
    if installed.as_of < built_in.catalogue().as_of {
        tracing::info!(
            installed = %installed.as_of,
            built_in = %built_in.catalogue().as_of,
            "the built-in price catalogue is more recent than the installed one, and is in force"
        );
        return Ok(built_in);
    }
    let origin = Origin::Installed(Installed {
        id: row.id,
        installed_at: row.installed_at,
        from: row.origin,
    });
    Ok(Arc::new(Table::new(installed, origin)))
}

/// Install `catalogue` (read from `from`): every instance uses it within seconds, and every
/// later start.
pub async fn store(
    db: &impl ConnectionTrait,
    catalogue: &Catalogue,
    from: &str,
) -> Result<i64, DbError> {
    let row = pricing_catalogue::ActiveModel {
        id: ActiveValue::NotSet,
        installed_at: ActiveValue::Set(Utc::now()),
        origin: ActiveValue::Set(from.to_owned()),
        as_of: ActiveValue::Set(catalogue.as_of.to_string()),
        catalogue: ActiveValue::Set(catalogue.to_json()),
    }
    .insert(db)
    .await?;
    Ok(row.id)
}

/// The text of a catalogue at `source`: an `http(s)://` URL, or a file.
pub async fn fetch_text(source: &str) -> anyhow::Result<String> {
    let url = source;
    let source = shown(source);
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        let text = tokio::fs::read(url)
            .await
            .with_context(|| format!("cannot read {source}"))?;
        anyhow::ensure!(
            text.len() <= MAX_BYTES,
            "{source} is over {} MiB: not a price catalogue",
            MAX_BYTES >> 20
        );
        return String::from_utf8(text).with_context(|| format!("{source} is not UTF-8 text"));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut response = client
        .get(url)
        .send()
        .await
        // reqwest's error names the URL it was given: only the shown one goes into the message.
        .map_err(|error| anyhow::anyhow!("cannot fetch {source}: {}", error.without_url()))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "{source} answered {status}");
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| anyhow::anyhow!("cannot fetch {source}: {}", error.without_url()))?
    {
        body.extend_from_slice(&chunk);
        anyhow::ensure!(
            body.len() <= MAX_BYTES,
            "{source} sent over {} MiB: not a price catalogue",
            MAX_BYTES >> 20
        );
    }
    String::from_utf8(body).with_context(|| format!("{source} did not send UTF-8 text"))
}

/// Read and check the catalogue at `source`: it must be valid, and no older than this
/// version's built-in one (which would stay in force).
pub async fn read_checked(source: &str) -> anyhow::Result<Catalogue> {
    let shown = shown(source);
    let text = fetch_text(source).await?;
    let catalogue = Catalogue::parse(&text).with_context(|| format!("{shown} was refused"))?;
    let built_in = Table::built_in().catalogue().as_of;
    anyhow::ensure!(
        catalogue.as_of >= built_in,
        "{shown} was refused: it is as of {}, older than this version's built-in catalogue (as of {built_in}), which would stay in force; give it an `as_of` of {built_in} or later",
        catalogue.as_of
    );
    Ok(catalogue)
}

/// Install the catalogue at `source` unless it is the one in force; returns whether it was
/// new.
pub async fn install_from(
    db: &impl ConnectionTrait,
    source: &str,
    in_force: &Table,
) -> anyhow::Result<bool> {
    let catalogue = read_checked(source).await?;
    if catalogue == *in_force.catalogue() {
        return Ok(false);
    }
    store(db, &catalogue, &shown(source)).await?;
    Ok(true)
}

/// `source` as messages and the database show it: a URL without a password or a query (either
/// may hold a token).
pub fn shown(source: &str) -> String {
    let Ok(uri) = source.parse::<http::Uri>() else {
        return source.to_owned();
    };
    match (uri.scheme_str(), uri.host()) {
        (Some(scheme @ ("http" | "https")), Some(host)) => {
            let port = uri.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{scheme}://{host}{port}{}", uri.path())
        }
        _ => source.to_owned(),
    }
}

/// How often another instance's `pricing update` is looked for.
const POLL: Duration = Duration::from_secs(2);
/// How often `pricing_url` is fetched.
const REFRESH: Duration = Duration::from_secs(24 * 3600);
/// How soon a failed fetch of `pricing_url` is tried again.
const RETRY: Duration = Duration::from_secs(3600);

/// Keep the catalogue in force current: install `pricing_url` at start and every 24 hours
/// (a failure keeps the catalogue in force, and says so in the log), and pick up a catalogue
/// another instance or `pricing update` installed within 2 seconds. `apply` receives each new
/// catalogue in force.
pub async fn keep_current(
    db: sea_orm::DatabaseConnection,
    mut in_force: Arc<Table>,
    pricing_url: impl Fn() -> Option<String> + Send,
    apply: impl Fn(Arc<Table>) + Send,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut seen = newest_id(&db).await.ok().flatten();
    let mut fetched: Option<(String, tokio::time::Instant)> = None;
    loop {
        let now = tokio::time::Instant::now();
        if let Some(url) = pricing_url() {
            let due = fetched
                .as_ref()
                .is_none_or(|(last, next)| *last != url || *next <= now);
            if due {
                let next = match install_from(&db, &url, &in_force).await {
                    Ok(installed) => {
                        if installed {
                            tracing::info!(
                                from = url,
                                "installed the price catalogue of pricing_url"
                            );
                        }
                        now + REFRESH
                    }
                    Err(error) => {
                        tracing::warn!(
                            from = shown(&url),
                            error = format!("{error:#}"),
                            "could not refresh the price catalogue from pricing_url; the one in force stays, and it is tried again in an hour"
                        );
                        now + RETRY
                    }
                };
                fetched = Some((url, next));
            }
        }
        match newest_id(&db).await {
            Ok(newest) if newest != seen => match load_in_force(&db).await {
                Ok(table) => {
                    seen = newest;
                    tracing::info!(
                        as_of = %table.catalogue().as_of,
                        models = table.catalogue().models.len(),
                        origin = %table.origin(),
                        "price catalogue in force"
                    );
                    in_force = Arc::clone(&table);
                    apply(table);
                }
                Err(error) => {
                    tracing::debug!(%error, "could not read the installed price catalogue")
                }
            },
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "could not look for a new price catalogue"),
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = stop.cancelled() => return,
        }
    }
}
