//! Hourly rollups of the request history, and the daily spending of each client key: written
//! with each batch of records (same transaction), read by `/api/stats`, the dashboard and the
//! budget checks, so none of them aggregates the whole history.

use std::collections::BTreeMap;

use crate::pricing::Cost;
use chrono::{DateTime, Utc};
use claudeflare_tower::RequestRecord;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::Serialize;

use super::{DbError, int, placeholders};

/// The rollup key of an instant: `YYYY-MM-DDTHH` in UTC.
pub fn hour_key(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H").to_string()
}

/// The day key of an instant: `YYYY-MM-DD` in UTC.
fn day_key(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// What a batch adds to one rollup row.
#[derive(Default)]
pub(super) struct Sums {
    pub requests: i64,
    pub successes: i64,
    pub response_time_ms: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read: i64,
    pub cache_creation: i64,
    pub cost: f64,
    pub unpriced: i64,
}

/// A batch's additions to the rollups: one per hour (`YYYY-MM-DDTHH`), account and model ('' for
/// none), in key order.
pub(super) fn additions<'a>(
    batch: impl IntoIterator<Item = &'a (RequestRecord, Cost)>,
) -> Vec<(String, &'a str, &'a str, Sums)> {
    // Keyed by the hour's number and borrowed names: nothing is formatted or copied per record.
    let mut sums: BTreeMap<(i64, &str, &str), Sums> = BTreeMap::new();
    for (record, cost) in batch {
        let key = (
            record.timestamp.timestamp().div_euclid(3600),
            record.account.as_deref().unwrap_or_default(),
            record.model.as_deref().unwrap_or_default(),
        );
        let sum = sums.entry(key).or_default();
        sum.requests += 1;
        sum.successes += i64::from(record.success);
        sum.response_time_ms += int(record.response_time_ms);
        sum.input_tokens += int(record.usage.input_tokens);
        sum.output_tokens += int(record.usage.output_tokens);
        sum.cache_read += int(record.usage.cache_read_input_tokens);
        sum.cache_creation += int(record.usage.cache_creation_input_tokens);
        sum.cost += cost.usd;
        sum.unpriced += i64::from(!cost.known);
    }
    sums.into_iter()
        .map(|((hour, account, model), sums)| {
            let hour = DateTime::from_timestamp(hour * 3600, 0).unwrap_or_default();
            (hour_key(hour), account, model, sums)
        })
        .collect()
}

/// The upsert that adds one of [`additions`] to its row (parameters: hour, account, model, then
/// the sums in their order).
pub(super) fn upsert_sql(backend: DbBackend) -> String {
    format!(
        "INSERT INTO request_rollups (hour, account, model, requests, successes, response_time_ms, input_tokens, \
         output_tokens, cache_read_input_tokens, cache_creation_input_tokens, cost_usd, unpriced_requests) \
         VALUES ({}) ON CONFLICT (hour, account, model) DO UPDATE SET \
         requests = request_rollups.requests + excluded.requests, \
         successes = request_rollups.successes + excluded.successes, \
         response_time_ms = request_rollups.response_time_ms + excluded.response_time_ms, \
         input_tokens = request_rollups.input_tokens + excluded.input_tokens, \
         output_tokens = request_rollups.output_tokens + excluded.output_tokens, \
         cache_read_input_tokens = request_rollups.cache_read_input_tokens + excluded.cache_read_input_tokens, \
         cache_creation_input_tokens = request_rollups.cache_creation_input_tokens + excluded.cache_creation_input_tokens, \
         cost_usd = request_rollups.cost_usd + excluded.cost_usd, \
         unpriced_requests = request_rollups.unpriced_requests + excluded.unpriced_requests",
        placeholders(backend, 12).join(", ")
    )
}

/// A batch's additions to the daily spending of client keys: requests and cost for each day
/// (`YYYY-MM-DD`) and key name, in key order. Requests without a key add nothing.
pub(super) fn key_additions<'a>(
    batch: impl IntoIterator<Item = &'a (RequestRecord, Cost)>,
) -> Vec<(String, &'a str, i64, f64)> {
    let mut sums: BTreeMap<(i64, &str), (i64, f64)> = BTreeMap::new();
    for (record, cost) in batch {
        let Some(key) = record.client.as_deref() else {
            continue;
        };
        let sum = sums
            .entry((record.timestamp.timestamp().div_euclid(86_400), key))
            .or_default();
        sum.0 += 1;
        sum.1 += cost.usd;
    }
    sums.into_iter()
        .map(|((day, key), (requests, cost))| {
            let day = DateTime::from_timestamp(day * 86_400, 0).unwrap_or_default();
            (day_key(day), key, requests, cost)
        })
        .collect()
}

/// The upsert that adds one of [`key_additions`] to its row (parameters: day, key, requests,
/// cost).
pub(super) fn key_upsert_sql(backend: DbBackend) -> String {
    format!(
        "INSERT INTO key_spending (day, api_key, requests, cost_usd) VALUES ({}) \
         ON CONFLICT (day, api_key) DO UPDATE SET \
         requests = key_spending.requests + excluded.requests, \
         cost_usd = key_spending.cost_usd + excluded.cost_usd",
        placeholders(backend, 4).join(", ")
    )
}

/// Requests and cost of each key (by name) from the day of `since` on (UTC), from every
/// instance's records.
pub async fn key_spending_since(
    db: &impl ConnectionTrait,
    since: DateTime<Utc>,
) -> Result<Vec<(String, i64, f64)>, DbError> {
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT api_key, CAST(SUM(requests) AS BIGINT) AS requests, \
         CAST(SUM(cost_usd) AS DOUBLE PRECISION) AS cost FROM key_spending \
         WHERE day >= {} GROUP BY api_key",
        placeholders(backend, 1)[0]
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [day_key(since).into()],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<String>("", "api_key")?,
                row.try_get::<i64>("", "requests")?,
                row.try_get::<f64>("", "cost")?,
            ))
        })
        .collect()
}

/// Totals over a span of the history.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Requests.
    pub total_requests: i64,
    /// Successful requests.
    pub successful_requests: i64,
    /// Mean total time.
    pub avg_response_time_ms: f64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cache reads.
    pub cache_read_input_tokens: i64,
    /// Cache writes.
    pub cache_creation_input_tokens: i64,
    /// Estimated cost.
    pub total_cost_usd: f64,
}

impl Totals {
    /// Success rate in percent (0 with no requests).
    pub fn success_rate(&self) -> f64 {
        if self.total_requests == 0 {
            return 0.0;
        }
        self.successful_requests as f64 * 100.0 / self.total_requests as f64
    }
}

const SUMS: &str = "CAST(COALESCE(SUM(requests), 0) AS BIGINT) AS requests, \
    CAST(COALESCE(SUM(successes), 0) AS BIGINT) AS successes, \
    CAST(COALESCE(SUM(response_time_ms), 0) AS BIGINT) AS response_time_ms, \
    CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens, \
    CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens, \
    CAST(COALESCE(SUM(cache_read_input_tokens), 0) AS BIGINT) AS cache_read, \
    CAST(COALESCE(SUM(cache_creation_input_tokens), 0) AS BIGINT) AS cache_creation, \
    CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) AS cost";

fn totals_of(row: &sea_orm::QueryResult) -> Result<Totals, DbError> {
    let requests: i64 = row.try_get("", "requests")?;
    let response_time: i64 = row.try_get("", "response_time_ms")?;
    Ok(Totals {
        total_requests: requests,
        successful_requests: row.try_get("", "successes")?,
        avg_response_time_ms: if requests == 0 {
            0.0
        } else {
            response_time as f64 / requests as f64
        },
        input_tokens: row.try_get("", "input_tokens")?,
        output_tokens: row.try_get("", "output_tokens")?,
        cache_read_input_tokens: row.try_get("", "cache_read")?,
        cache_creation_input_tokens: row.try_get("", "cache_creation")?,
        total_cost_usd: row.try_get("", "cost")?,
    })
}

/// Totals of the hours from `since` on (all of the history when `None`).
pub async fn totals(
    db: &impl ConnectionTrait,
    since: Option<DateTime<Utc>>,
) -> Result<Totals, DbError> {
    let backend = db.get_database_backend();
    let statement = match since {
        Some(since) => Statement::from_sql_and_values(
            backend,
            format!(
                "SELECT {SUMS} FROM request_rollups WHERE hour >= {}",
                placeholders(backend, 1)[0]
            ),
            [hour_key(since).into()],
        ),
        None => Statement::from_string(backend, format!("SELECT {SUMS} FROM request_rollups")),
    };
    match db.query_one_raw(statement).await? {
        Some(row) => totals_of(&row),
        None => Ok(Totals::default()),
    }
}

/// A model whose requests found no price (their cost counted as 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Unpriced {
    /// The model that served them.
    pub model: String,
    /// How many.
    pub requests: i64,
}

/// The models of the history that found no price, the most requested first.
pub async fn unpriced(db: &impl ConnectionTrait) -> Result<Vec<Unpriced>, DbError> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT model, CAST(SUM(unpriced_requests) AS BIGINT) AS requests FROM request_rollups \
             WHERE unpriced_requests > 0 AND model <> '' GROUP BY model ORDER BY requests DESC, model",
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Unpriced {
                model: row.try_get("", "model")?,
                requests: row.try_get("", "requests")?,
            })
        })
        .collect()
}

/// The line that names the models without a price and how to price them, if any.
pub fn unpriced_warning(unpriced: &[Unpriced]) -> Option<String> {
    if unpriced.is_empty() {
        return None;
    }
    let named: Vec<String> = unpriced
        .iter()
        .map(|u| {
            let plural = if u.requests == 1 { "" } else { "s" };
            format!("{} ({} request{plural})", u.model, u.requests)
        })
        .collect();
    Some(format!(
        "No price for {}: counted as $0. Run `claudeflare-server pricing update FILE|URL` with a catalogue that has them, or add them under `pricing` in the config file.",
        named.join(", ")
    ))
}

/// How to group a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// `YYYY-MM-DDTHH`.
    Hour,
    /// `YYYY-MM-DD`.
    Day,
    /// Account name ('' for none).
    Account,
    /// Model ('' for unknown).
    Model,
}

/// Totals grouped `by`, over the hours from `since` on, ordered by key.
pub async fn series(
    db: &impl ConnectionTrait,
    since: DateTime<Utc>,
    by: By,
) -> Result<Vec<(String, Totals)>, DbError> {
    let key = match by {
        By::Hour => "hour",
        By::Day => "substr(hour, 1, 10)",
        By::Account => "account",
        By::Model => "model",
    };
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT {key} AS k, {SUMS} FROM request_rollups WHERE hour >= {} GROUP BY {key} ORDER BY {key}",
        placeholders(backend, 1)[0]
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [hour_key(since).into()],
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get::<String>("", "k")?, totals_of(row)?)))
        .collect()
}

/// Delete the hours before `before`.
///
/// A key's spending is kept for this month and the week it began in, whatever `before` is: a
/// month's budget counts every request of the month even when the history keeps less.
pub async fn trim(db: &impl ConnectionTrait, before: DateTime<Utc>) -> Result<(), DbError> {
    let backend = db.get_database_backend();
    let placeholder = &placeholders(backend, 1)[0];
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        format!("DELETE FROM request_rollups WHERE hour < {placeholder}"),
        [hour_key(before).into()],
    ))
    .await?;
    let spending_kept = super::keys::month_start(Utc::now()) - chrono::TimeDelta::days(7);
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        format!("DELETE FROM key_spending WHERE day < {placeholder}"),
        [day_key(before.min(spending_kept)).into()],
    ))
    .await?;
    Ok(())
}

/// Delete every rollup and every key's spending.
pub async fn clear(db: &impl ConnectionTrait) -> Result<(), DbError> {
    db.execute_unprepared("DELETE FROM request_rollups").await?;
    db.execute_unprepared("DELETE FROM key_spending").await?;
    Ok(())
}
