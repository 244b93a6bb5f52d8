//! The request history: batched inserts (with the hourly rollups and the keys' daily spending,
//! in one transaction), the newest requests with filters, trimming.

use std::sync::{Arc, OnceLock};

use crate::pricing::Cost;
use chrono::{DateTime, Utc};
use claudeflare_tower::RequestRecord;
use sea_orm::sqlx::{self, Arguments, Encode, IntoArguments, Type};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, IdenStatic,
    QueryFilter, QueryOrder, QuerySelect, RuntimeErr,
};

use super::entities::request::{Column, Entity, Model};
use super::{DbError, int, placeholders, rollups};

mod copy;

/// The columns of a row, in the order [`write`] binds them.
const COLUMNS: [Column; 24] = [
    Column::Id,
    Column::Timestamp,
    Column::Method,
    Column::Path,
    Column::AccountId,
    Column::AccountName,
    Column::Status,
    Column::Success,
    Column::Error,
    Column::ResponseTimeMs,
    Column::FirstByteMs,
    Column::UpstreamMs,
    Column::FailoverAttempts,
    Column::Model,
    Column::RequestedModel,
    Column::Stream,
    Column::InputTokens,
    Column::OutputTokens,
    Column::CacheReadInputTokens,
    Column::CacheCreationInputTokens,
    Column::CostUsd,
    Column::PriceKnown,
    Column::ApiKey,
    Column::Provider,
];

/// How many rows each SQLite `INSERT` of a batch carries: a batch goes in power-of-two chunks
/// of at most 64 rows, so a handful of statement shapes keeps the prepared-statement cache small
/// and warm whatever the batch sizes. (PostgreSQL takes a batch in one `COPY`: see
/// [`write_postgres`].)
const CHUNKS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// The write path's statements for one backend, built once.
struct Statements {
    backend: DbBackend,
    /// `INSERT OR ROLLBACK INTO requests … VALUES (…), …` for each of [`CHUNKS`] (SQLite).
    inserts: Vec<String>,
    /// `COPY requests (…) FROM STDIN (FORMAT binary)` (PostgreSQL).
    copy: String,
    /// [`rollups::upsert_sql`].
    rollup: String,
    /// [`rollups::key_upsert_sql`].
    key_spending: String,
    /// Run first in each batch's transaction.
    prelude: Option<&'static str>,
}

impl Statements {
    fn new(backend: DbBackend) -> Self {
        let columns: Vec<&str> = COLUMNS.iter().map(|c| c.as_str()).collect();
        let insert = |rows: usize| {
            let rows: Vec<String> = placeholders(backend, rows * COLUMNS.len())
                .chunks(COLUMNS.len())
                .map(|row| format!("({})", row.join(", ")))
                .collect();
            // `OR ROLLBACK`: a row the table refuses ends the whole transaction at once, as the
            // error ends the batch anyway. With the default (`ABORT`, undo this statement
            // only), SQLite kept the original of every page the statement changed in a
            // statement journal, and past 64 KiB moved it to a temporary file: one created,
            // written page by page and deleted for every batch (72–84 KiB under the
            // benchmark's load, half of the server's `pwrite64` calls).
            format!(
                "INSERT OR ROLLBACK INTO requests ({}) VALUES {}",
                columns.join(", "),
                rows.join(", ")
            )
        };
        Self {
            backend,
            inserts: CHUNKS.iter().map(|&rows| insert(rows)).collect(),
            copy: format!(
                "COPY requests ({}) FROM STDIN (FORMAT binary)",
                columns.join(", ")
            ),
            rollup: rollups::upsert_sql(backend),
            key_spending: rollups::key_upsert_sql(backend),
            // The commit returns without waiting for the WAL to reach the disk: the same trade
            // as SQLite's `synchronous = NORMAL` (a crash of the database can lose the last
            // records, never corrupt them), and the writer no longer waits a disk flush per
            // batch. Only this transaction is affected.
            prelude: (backend == DbBackend::Postgres)
                .then_some("SET LOCAL synchronous_commit = off"),
        }
    }

    fn of(backend: DbBackend) -> &'static Self {
        static SQLITE: OnceLock<Statements> = OnceLock::new();
        static POSTGRES: OnceLock<Statements> = OnceLock::new();
        let cell = if backend == DbBackend::Postgres {
            &POSTGRES
        } else {
            &SQLITE
        };
        cell.get_or_init(|| Self::new(backend))
    }
}

/// Insert a batch of finished requests (with their costs) and update the rollups, in one
/// transaction. With `recheck` (a batch tried before, or read back from the spill file), the
/// requests already stored are left out first, so that a batch whose commit went through
/// unseen (the connection lost on the way back) is not stored twice: the request id is the key.
///
/// This is the one write on the proxy's busy path, so it goes to sqlx directly, under sea-orm:
/// statements built once, no `RETURNING`. Measured with callgrind under the benchmark's load,
/// the record writer went from about 12,900 to 3,700 instructions per request on the worker
/// threads this way (docs/benchmarks-history.md, third round). The batch is only borrowed, so a failed write
/// leaves it whole for the writer to try again.
///
/// The write runs on a connection of its own from the pool, and a connection whose write failed
/// is closed, never given back: after a failed `COMMIT` the driver's idea of the connection's
/// transaction may no longer be SQLite's (see the `sqlite` module), and a connection that lost
/// PostgreSQL mid-transaction is of no further use either.
pub async fn insert_batch(
    db: &DatabaseConnection,
    batch: &[(RequestRecord, Cost)],
    recheck: bool,
) -> Result<(), DbError> {
    if batch.is_empty() {
        return Ok(());
    }
    let backend = db.get_database_backend();
    let statements = Statements::of(backend);
    // `db::open` connects to these two backends only (the others are not compiled in).
    let result = match backend {
        DbBackend::Postgres => {
            write_postgres(
                db.get_postgres_connection_pool(),
                statements,
                batch,
                recheck,
            )
            .await
        }
        _ => write_sqlite(db.get_sqlite_connection_pool(), statements, batch, recheck).await,
    };
    result.map_err(|error| DbErr::Exec(RuntimeErr::SqlxError(Arc::new(error))).into())
}

/// [`insert_batch`] on SQLite: `BEGIN IMMEDIATE` takes the write lock before anything is read
/// (a deferred transaction that reads the rollups first could be refused at its first write
/// without waiting), rows go in multi-row `INSERT`s, and the batch counts as stored only if
/// SQLite is out of the transaction once the commit returns.
async fn write_sqlite(
    pool: &sqlx::SqlitePool,
    statements: &'static Statements,
    batch: &[(RequestRecord, Cost)],
    recheck: bool,
) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    on_own_connection(pool, async |conn| {
        let mut txn = conn.begin_with("BEGIN IMMEDIATE").await?;
        let rows = prepare::<sqlx::Sqlite>(&mut txn, statements, batch, recheck).await?;
        insert_values(&mut txn, statements, &rows).await?;
        txn.commit().await?;
        if !super::sqlite::sound(conn).await? {
            return Err(sqlx::Error::Protocol(
                "the commit returned, but SQLite is still inside a transaction".into(),
            ));
        }
        Ok(())
    })
    .await
}

/// Run `write` on a connection of its own from `pool`. A connection whose write failed is
/// closed, never given back (see [`insert_batch`]).
async fn on_own_connection<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    write: impl AsyncFnOnce(&mut sqlx::pool::PoolConnection<DB>) -> Result<(), sqlx::Error>,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let result = write(&mut conn).await;
    if result.is_err() {
        conn.close_on_drop();
    }
    result
}

/// [`insert_batch`] on PostgreSQL: rows go in one binary `COPY`.
async fn write_postgres(
    pool: &sqlx::PgPool,
    statements: &'static Statements,
    batch: &[(RequestRecord, Cost)],
    recheck: bool,
) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    on_own_connection(pool, async |conn| {
        let mut txn = conn.begin().await?;
        if let Some(prelude) = statements.prelude {
            sqlx::query(prelude).execute(&mut *txn).await?;
        }
        let rows = prepare::<sqlx::Postgres>(&mut txn, statements, batch, recheck).await?;
        if !rows.is_empty() {
            let mut copy = txn.copy_in_raw(&statements.copy).await?;
            copy.send(copy::binary(&rows)).await?;
            copy.finish().await?;
        }
        txn.commit().await
    })
    .await
}

/// What of `batch` to insert (all of it, or with `recheck` what is not stored yet), with the
/// rollups and the keys' spending of those rows added.
async fn prepare<'b, DB>(
    conn: &mut DB::Connection,
    statements: &'static Statements,
    batch: &'b [(RequestRecord, Cost)],
    recheck: bool,
) -> Result<Vec<&'b (RequestRecord, Cost)>, sqlx::Error>
where
    DB: sqlx::Database,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> String: Encode<'q, DB> + Type<DB> + sqlx::Decode<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let mut rows: Vec<&(RequestRecord, Cost)> = batch.iter().collect();
    if recheck {
        let stored = stored_ids::<DB>(conn, statements.backend, batch).await?;
        rows.retain(|(record, _)| !stored.contains(record.id.as_str()));
    }
    for (hour, account, model, sums) in rollups::additions(rows.iter().copied()) {
        let mut args = DB::Arguments::default();
        bind(&mut args, hour)?;
        bind(&mut args, account)?;
        bind(&mut args, model)?;
        for sum in [
            sums.requests,
            sums.successes,
            sums.response_time_ms,
            sums.input_tokens,
            sums.output_tokens,
            sums.cache_read,
            sums.cache_creation,
        ] {
            bind(&mut args, sum)?;
        }
        bind(&mut args, sums.cost)?;
        bind(&mut args, sums.unpriced)?;
        sqlx::query_with(statements.rollup.as_str(), args)
            .execute(&mut *conn)
            .await?;
    }
    for (day, key, requests, cost) in rollups::key_additions(rows.iter().copied()) {
        let mut args = DB::Arguments::default();
        bind(&mut args, day)?;
        bind(&mut args, key)?;
        bind(&mut args, requests)?;
        bind(&mut args, cost)?;
        sqlx::query_with(statements.key_spending.as_str(), args)
            .execute(&mut *conn)
            .await?;
    }
    Ok(rows)
}

/// The ids of `batch` already in the table.
async fn stored_ids<DB>(
    conn: &mut DB::Connection,
    backend: DbBackend,
    batch: &[(RequestRecord, Cost)],
) -> Result<std::collections::HashSet<String>, sqlx::Error>
where
    DB: sqlx::Database,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> String: sqlx::Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    // Only placeholders are formatted into it; the ids are bound.
    let sql = format!(
        "SELECT id FROM requests WHERE id IN ({})",
        placeholders(backend, batch.len()).join(", ")
    );
    let mut args = DB::Arguments::default();
    for (record, _) in batch {
        bind(&mut args, record.id.as_str())?;
    }
    let found = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
        .fetch_all(&mut *conn)
        .await?;
    found
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect()
}

/// The rows in multi-row `INSERT`s of the sizes of [`SQLITE_CHUNKS`].
async fn insert_values(
    conn: &mut sqlx::SqliteConnection,
    statements: &'static Statements,
    rows: &[&(RequestRecord, Cost)],
) -> Result<(), sqlx::Error> {
    let mut rest = rows.len();
    let mut rows = rows.iter();
    while rest > 0 {
        let sizes = &CHUNKS[..statements.inserts.len()];
        let chunk = sizes.partition_point(|&size| size <= rest) - 1;
        let mut args = sqlx::sqlite::SqliteArguments::default();
        args.reserve(CHUNKS[chunk] * COLUMNS.len(), 0);
        for (record, cost) in rows.by_ref().take(CHUNKS[chunk]) {
            // In the order of `COLUMNS`.
            bind::<sqlx::Sqlite, _>(&mut args, record.id.as_str())?;
            bind::<sqlx::Sqlite, _>(&mut args, record.timestamp)?;
            bind::<sqlx::Sqlite, _>(&mut args, record.method.as_str())?;
            bind::<sqlx::Sqlite, _>(&mut args, record.path.as_str())?;
            bind::<sqlx::Sqlite, _>(&mut args, record.account_id.as_deref())?;
            bind::<sqlx::Sqlite, _>(&mut args, record.account.as_deref())?;
            bind::<sqlx::Sqlite, _>(&mut args, record.status.map(i32::from))?;
            bind::<sqlx::Sqlite, _>(&mut args, record.success)?;
            bind::<sqlx::Sqlite, _>(&mut args, record.error.as_deref())?;
            bind::<sqlx::Sqlite, _>(&mut args, int(record.response_time_ms))?;
            bind::<sqlx::Sqlite, _>(&mut args, record.first_byte_ms.map(int))?;
            bind::<sqlx::Sqlite, _>(&mut args, record.upstream_ms.map(int))?;
            bind::<sqlx::Sqlite, _>(
                &mut args,
                i32::try_from(record.failover_attempts).unwrap_or(i32::MAX),
            )?;
            bind::<sqlx::Sqlite, _>(&mut args, record.model.as_deref())?;
            bind::<sqlx::Sqlite, _>(&mut args, record.requested_model.as_deref())?;
            bind::<sqlx::Sqlite, _>(&mut args, record.stream)?;
            bind::<sqlx::Sqlite, _>(&mut args, int(record.usage.input_tokens))?;
            bind::<sqlx::Sqlite, _>(&mut args, int(record.usage.output_tokens))?;
            bind::<sqlx::Sqlite, _>(&mut args, int(record.usage.cache_read_input_tokens))?;
            bind::<sqlx::Sqlite, _>(&mut args, int(record.usage.cache_creation_input_tokens))?;
            bind::<sqlx::Sqlite, _>(&mut args, cost.usd)?;
            bind::<sqlx::Sqlite, _>(&mut args, cost.known)?;
            bind::<sqlx::Sqlite, _>(&mut args, record.client.as_deref())?;
            bind::<sqlx::Sqlite, _>(&mut args, record.provider.as_deref())?;
        }
        sqlx::query_with(statements.inserts[chunk].as_str(), args)
            .execute(&mut *conn)
            .await?;
        rest -= CHUNKS[chunk];
    }
    Ok(())
}

/// Add `value` to a statement's arguments.
fn bind<'q, DB, T>(args: &mut DB::Arguments, value: T) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    T: Encode<'q, DB> + Type<DB>,
{
    args.add(value).map_err(sqlx::Error::Encode)
}

/// Which requests to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Served by this account (by name).
    pub account: Option<String>,
    /// "ok", "error", or an HTTP status code.
    pub status: Option<String>,
    /// Sent with this client key (by name).
    pub api_key: Option<String>,
    /// Served by an account of this provider.
    pub provider: Option<String>,
}

/// The newest `limit` requests matching `filter`, newest first.
pub async fn newest(
    db: &impl ConnectionTrait,
    limit: u64,
    filter: &Filter,
) -> Result<Vec<Model>, DbError> {
    let mut query = Entity::find();
    if let Some(account) = &filter.account {
        query = query.filter(Column::AccountName.eq(account.as_str()));
    }
    if let Some(key) = &filter.api_key {
        query = query.filter(Column::ApiKey.eq(key.as_str()));
    }
    if let Some(provider) = &filter.provider {
        query = query.filter(Column::Provider.eq(provider.as_str()));
    }
    match filter.status.as_deref() {
        Some("ok") => query = query.filter(Column::Success.eq(true)),
        Some("error") => query = query.filter(Column::Success.eq(false)),
        Some(code) => {
            if let Ok(code) = code.parse::<i32>() {
                query = query.filter(Column::Status.eq(code));
            }
        }
        None => {}
    }
    let rows = query
        .order_by_desc(Column::Timestamp)
        .order_by_desc(Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    Ok(rows)
}

/// Delete requests (and rollup hours) older than `before`; returns how many requests.
pub async fn trim(db: &impl ConnectionTrait, before: DateTime<Utc>) -> Result<u64, DbError> {
    let deleted = Entity::delete_many()
        .filter(Column::Timestamp.lt(before))
        .exec(db)
        .await?
        .rows_affected;
    rollups::trim(db, before).await?;
    Ok(deleted)
}

/// Delete the whole history; returns how many requests.
pub async fn clear(db: &impl ConnectionTrait) -> Result<u64, DbError> {
    let deleted = Entity::delete_many().exec(db).await?.rows_affected;
    rollups::clear(db).await?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use sea_orm::Iterable;

    fn record(id: usize, age: TimeDelta) -> RequestRecord {
        let mut record =
            RequestRecord::new(format!("r{id}"), Utc::now() - age, "POST", "/v1/messages");
        record.account = Some(if id % 2 == 0 { "a" } else { "b" }.into());
        record.status = Some(if id % 10 == 0 { 500 } else { 200 });
        record.success = id % 10 != 0;
        record.response_time_ms = 10;
        record.first_byte_ms = Some(5);
        record.upstream_ms = Some(4);
        record.overhead_us = Some(100);
        record.model = Some("claude-sonnet-4-20250514".into());
        record.usage.input_tokens = 1;
        record.usage.output_tokens = 2;
        record
    }

    #[tokio::test]
    async fn every_field_is_stored_in_its_own_column() {
        let db = crate::db::open("sqlite::memory:").await.unwrap();
        let timestamp = DateTime::parse_from_rfc3339("2026-11-22T01:02:03.456Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut stored = RequestRecord::new("req-1", timestamp, "POST", "/v1/messages?beta=true");
        stored.account_id = Some("acc-1".into());
        stored.account = Some("work".into());
        stored.provider = Some("anthropic".into());
        stored.status = Some(529);
        stored.error = Some("overloaded".into());
        stored.response_time_ms = 11;
        stored.first_byte_ms = Some(12);
        stored.upstream_ms = Some(13);
        stored.overhead_us = Some(14);
        stored.failover_attempts = 2;
        stored.model = Some("claude-opus-4-1".into());
        stored.requested_model = Some("claude-fable-5".into());
        stored.stream = true;
        stored.usage.input_tokens = 15;
        stored.usage.output_tokens = 16;
        stored.usage.cache_read_input_tokens = 17;
        stored.usage.cache_creation_input_tokens = 18;
        stored.usage.cache_creation_1h_input_tokens = 9;
        stored.client = Some("team".into());
        let cost = Cost {
            usd: 0.25,
            known: false,
        };
        insert_batch(&db, &[(stored, cost)], false).await.unwrap();
        let rows = newest(&db, 10, &Filter::default()).await.unwrap();
        assert_eq!(
            rows,
            [Model {
                id: "req-1".into(),
                timestamp,
                method: "POST".into(),
                path: "/v1/messages?beta=true".into(),
                account_id: Some("acc-1".into()),
                account_name: Some("work".into()),
                status: Some(529),
                success: false,
                error: Some("overloaded".into()),
                response_time_ms: 11,
                first_byte_ms: Some(12),
                upstream_ms: Some(13),
                failover_attempts: 2,
                model: Some("claude-opus-4-1".into()),
                requested_model: Some("claude-fable-5".into()),
                stream: true,
                input_tokens: 15,
                output_tokens: 16,
                cache_read_input_tokens: 17,
                cache_creation_input_tokens: 18,
                cost_usd: 0.25,
                price_known: false,
                api_key: Some("team".into()),
                provider: Some("anthropic".into()),
            }]
        );
        assert_eq!(
            COLUMNS.len(),
            Column::iter().count(),
            "every column is written"
        );
    }

    #[tokio::test]
    async fn a_batch_tried_again_after_its_commit_went_through_is_not_stored_twice() {
        let db = crate::db::open("sqlite::memory:").await.unwrap();
        let first: Vec<_> = (0..10)
            .map(|i| (record(i, TimeDelta::hours(1)), Cost::priced(1.0)))
            .collect();
        insert_batch(&db, &first, false).await.unwrap();
        // The same batch again (its commit's answer was lost), now with two new records.
        let mut again = first.clone();
        again.extend((10..12).map(|i| (record(i, TimeDelta::hours(1)), Cost::priced(1.0))));
        insert_batch(&db, &again, true).await.unwrap();
        assert_eq!(
            newest(&db, 100, &Filter::default()).await.unwrap().len(),
            12
        );
        let totals = rollups::totals(&db, None).await.unwrap();
        assert_eq!(totals.total_requests, 12, "the rollups count each once too");
        assert!((totals.total_cost_usd - 12.0).abs() < 1e-9);
        // Without the recheck, the key refuses the duplicates (and nothing of the batch is stored).
        assert!(insert_batch(&db, &again, false).await.is_err());
        assert_eq!(rollups::totals(&db, None).await.unwrap().total_requests, 12);
        // The refusal ended its transaction (`OR ROLLBACK`) and cost its connection: the next
        // batches are stored whole, whichever connection they get.
        for round in 0..5 {
            let next: Vec<_> = (0..3)
                .map(|i| {
                    (
                        record(100 + round * 3 + i, TimeDelta::hours(1)),
                        Cost::priced(1.0),
                    )
                })
                .collect();
            insert_batch(&db, &next, false).await.unwrap();
        }
        assert_eq!(
            newest(&db, 100, &Filter::default()).await.unwrap().len(),
            27
        );
        assert_eq!(rollups::totals(&db, None).await.unwrap().total_requests, 27);
    }

    /// The start (UTC) of the day `days` before today.
    fn day_start(days: i64) -> DateTime<Utc> {
        (Utc::now() - TimeDelta::days(days))
            .date_naive()
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
    }

    /// A record of the client key `key` made at `at`.
    fn keyed(id: &str, key: Option<&str>, at: DateTime<Utc>) -> (RequestRecord, Cost) {
        let mut record = record(0, TimeDelta::zero());
        record.id = id.into();
        record.timestamp = at;
        record.client = key.map(str::to_owned);
        (record, Cost::priced(0.5))
    }

    #[tokio::test]
    async fn a_keys_spending_is_kept_by_day_and_outlives_a_short_history() {
        let db = crate::db::open("sqlite::memory:").await.unwrap();
        let spending = async |since| {
            let mut rows = super::super::keys::usage_since(&db, since).await.unwrap();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            rows.into_iter()
                .map(|(key, requests, cost)| (key, requests, (cost * 100.0).round() / 100.0))
                .collect::<Vec<_>>()
        };
        let today = Utc::now();
        let mut batch = vec![
            keyed("t1", Some("team"), today),
            keyed("t2", Some("team"), today),
            keyed("o1", Some("ops"), today),
            keyed("n1", None, today),
            keyed("t3", Some("team"), today - TimeDelta::days(2)),
            keyed("t4", Some("team"), today - TimeDelta::days(40)),
        ];
        insert_batch(&db, &batch, false).await.unwrap();
        // Tried again with one more (its first commit went through unseen): each counted once.
        batch.push(keyed("t5", Some("team"), today));
        insert_batch(&db, &batch, true).await.unwrap();
        let team = |requests: i64| ("team".to_owned(), requests, requests as f64 * 0.5);
        let ops = ("ops".to_owned(), 1, 0.5);
        assert_eq!(spending(day_start(0)).await, [ops.clone(), team(3)]);
        assert_eq!(spending(day_start(2)).await, [ops.clone(), team(4)]);
        assert_eq!(spending(day_start(40)).await, [ops.clone(), team(5)]);

        // A history kept for less than a month: the requests go, this month's spending stays
        // (and the week it began in); what is older goes with the history.
        assert_eq!(trim(&db, today + TimeDelta::hours(1)).await.unwrap(), 7);
        assert_eq!(spending(day_start(0)).await, [ops.clone(), team(3)]);
        assert_eq!(spending(day_start(2)).await, [ops.clone(), team(4)]);
        assert_eq!(spending(day_start(40)).await, [ops.clone(), team(4)]);

        clear(&db).await.unwrap();
        assert_eq!(spending(day_start(40)).await, []);
    }

    #[tokio::test]
    async fn the_keys_spending_is_built_from_the_history_at_the_upgrade() {
        use sea_orm_migration::MigratorTrait;
        let folder = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            folder.path().join("db.sqlite").display()
        );
        let db = sea_orm::Database::connect(&url).await.unwrap();
        let before = migrations::Migrator::migrations().len() - 1;
        migrations::Migrator::up(&db, Some(before as u32))
            .await
            .unwrap();
        for (id, timestamp, key, cost) in [
            ("a", "2026-11-30T23:59:59.5+00:00", Some("team"), 1.0),
            ("b", "2026-12-01T00:00:00+00:00", Some("team"), 2.0),
            ("c", "2026-12-01T10:00:00+00:00", Some("team"), 4.0),
            ("d", "2026-12-01T10:00:00+00:00", None, 8.0),
        ] {
            db.execute_unprepared(&format!(
                "INSERT INTO requests (id, timestamp, method, path, success, response_time_ms, \
                 failover_attempts, stream, input_tokens, output_tokens, cache_read_input_tokens, \
                 cache_creation_input_tokens, cost_usd, api_key) VALUES ('{id}', '{timestamp}', \
                 'POST', '/v1/messages', true, 1, 0, false, 1, 1, 0, 0, {cost}, {})",
                key.map_or("NULL".to_owned(), |k| format!("'{k}'"))
            ))
            .await
            .unwrap();
        }
        migrations::Migrator::up(&db, None).await.unwrap();
        let since = |day: &str| {
            DateTime::parse_from_rfc3339(day)
                .unwrap()
                .with_timezone(&Utc)
        };
        let usage = super::super::keys::usage_since;
        assert_eq!(
            usage(&db, since("2026-12-01T00:00:00Z")).await.unwrap(),
            [("team".to_owned(), 2, 6.0)]
        );
        assert_eq!(
            usage(&db, since("2026-11-30T00:00:00Z")).await.unwrap(),
            [("team".to_owned(), 3, 7.0)]
        );
    }

    #[tokio::test]
    async fn batches_rollups_filters_and_retention() {
        let db = crate::db::open("sqlite::memory:").await.unwrap();
        let batch: Vec<_> = (0..1200)
            .map(|i| {
                (
                    record(i, TimeDelta::days(if i < 200 { 40 } else { 1 })),
                    Cost::priced(0.5),
                )
            })
            .collect();
        insert_batch(&db, &batch, false).await.unwrap();
        let totals = rollups::totals(&db, None).await.unwrap();
        assert_eq!(
            (
                totals.total_requests,
                totals.successful_requests,
                totals.output_tokens
            ),
            (1200, 1080, 2400)
        );
        assert!((totals.total_cost_usd - 600.0).abs() < 1e-9);
        assert_eq!(totals.avg_response_time_ms, 10.0);
        let by_account =
            rollups::series(&db, Utc::now() - TimeDelta::days(7), rollups::By::Account)
                .await
                .unwrap();
        assert_eq!(
            by_account
                .iter()
                .map(|(k, t)| (k.as_str(), t.total_requests))
                .collect::<Vec<_>>(),
            [("a", 500), ("b", 500)]
        );
        // A second batch adds to the same hours.
        insert_batch(
            &db,
            &[(record(5000, TimeDelta::days(1)), Cost::priced(1.0))],
            false,
        )
        .await
        .unwrap();
        assert_eq!(
            rollups::totals(&db, None).await.unwrap().total_requests,
            1201
        );

        let filter = |account: Option<&str>, status: Option<&str>| Filter {
            account: account.map(str::to_owned),
            status: status.map(str::to_owned),
            ..Filter::default()
        };
        assert_eq!(newest(&db, 3, &Filter::default()).await.unwrap().len(), 3);
        assert!(
            newest(&db, 50, &filter(Some("a"), None))
                .await
                .unwrap()
                .iter()
                .all(|r| r.account_name.as_deref() == Some("a"))
        );
        assert!(
            newest(&db, 50, &filter(None, Some("error")))
                .await
                .unwrap()
                .iter()
                .all(|r| !r.success)
        );
        assert!(
            newest(&db, 50, &filter(None, Some("500")))
                .await
                .unwrap()
                .iter()
                .all(|r| r.status == Some(500))
        );

        assert_eq!(
            trim(&db, Utc::now() - TimeDelta::days(30)).await.unwrap(),
            200
        );
        assert_eq!(
            rollups::totals(&db, None).await.unwrap().total_requests,
            1001
        );
        assert_eq!(clear(&db).await.unwrap(), 1001);
        assert_eq!(
            rollups::totals(&db, None).await.unwrap(),
            rollups::Totals::default()
        );
    }
}
