//! The request history: batched inserts (with the hourly rollups, in one transaction), the newest
//! requests with filters, trimming.

use chrono::{DateTime, Utc};
use claudeflare_tower::record::RequestRecord;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionSession, TransactionTrait,
};

use super::entities::request::{ActiveModel, Column, Entity, Model};
use super::{DbError, rollups};

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The row of a finished request, with its estimated cost.
pub fn row(record: &RequestRecord, cost_usd: f64) -> ActiveModel {
    ActiveModel {
        id: Set(record.id.clone()),
        timestamp: Set(record.timestamp),
        method: Set(record.method.clone()),
        path: Set(record.path.clone()),
        account_id: Set(record.account_id.clone()),
        account_name: Set(record.account.clone()),
        status: Set(record.status.map(i32::from)),
        success: Set(record.success),
        error: Set(record.error.clone()),
        response_time_ms: Set(int(record.response_time_ms)),
        first_byte_ms: Set(record.first_byte_ms.map(int)),
        upstream_ms: Set(record.upstream_ms.map(int)),
        failover_attempts: Set(i32::try_from(record.failover_attempts).unwrap_or(i32::MAX)),
        model: Set(record.model.clone()),
        stream: Set(record.stream),
        input_tokens: Set(int(record.usage.input_tokens)),
        output_tokens: Set(int(record.usage.output_tokens)),
        cache_read_input_tokens: Set(int(record.usage.cache_read_input_tokens)),
        cache_creation_input_tokens: Set(int(record.usage.cache_creation_input_tokens)),
        cost_usd: Set(cost_usd),
    }
}

/// Insert a batch of finished requests (with their costs) and update the rollups, in one
/// transaction.
pub async fn insert_batch<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    batch: &[(RequestRecord, f64)],
) -> Result<(), DbError> {
    if batch.is_empty() {
        return Ok(());
    }
    let txn = db.begin().await?;
    // Power-of-two chunks of at most 64 rows: a handful of statement shapes, each small, so the
    // prepared-statement cache stays small and warm whatever the batch sizes.
    let mut rest = batch;
    while !rest.is_empty() {
        let size = if rest.len() >= 64 {
            64
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(size);
        Entity::insert_many(chunk.iter().map(|(record, cost)| row(record, *cost)))
            .exec(&txn)
            .await?;
        rest = tail;
    }
    rollups::add(&txn, batch).await?;
    txn.commit().await?;
    Ok(())
}

/// Which requests to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Served by this account (by name).
    pub account: Option<String>,
    /// "ok", "error", or an HTTP status code.
    pub status: Option<String>,
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
    use claudeflare_tower::record::Usage;

    fn record(id: usize, age: TimeDelta) -> RequestRecord {
        RequestRecord {
            id: format!("r{id}"),
            timestamp: Utc::now() - age,
            method: "POST".into(),
            path: "/v1/messages".into(),
            account_id: None,
            account: Some(if id % 2 == 0 { "a" } else { "b" }.into()),
            status: Some(if id % 10 == 0 { 500 } else { 200 }),
            success: id % 10 != 0,
            error: None,
            response_time_ms: 10,
            first_byte_ms: Some(5),
            upstream_ms: Some(4),
            overhead_us: Some(100),
            failover_attempts: 0,
            model: Some("claude-sonnet-4-20250514".into()),
            stream: false,
            usage: Usage {
                input_tokens: 1,
                output_tokens: 2,
                ..Usage::default()
            },
        }
    }

    #[tokio::test]
    async fn batches_rollups_filters_and_retention() {
        let db = crate::db::open("sqlite::memory:").await.unwrap();
        let batch: Vec<_> = (0..1200)
            .map(|i| {
                (
                    record(i, TimeDelta::days(if i < 200 { 40 } else { 1 })),
                    0.5,
                )
            })
            .collect();
        insert_batch(&db, &batch).await.unwrap();
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
        insert_batch(&db, &[(record(5000, TimeDelta::days(1)), 1.0)])
            .await
            .unwrap();
        assert_eq!(
            rollups::totals(&db, None).await.unwrap().total_requests,
            1201
        );

        let filter = |account: Option<&str>, status: Option<&str>| Filter {
            account: account.map(str::to_owned),
            status: status.map(str::to_owned),
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
