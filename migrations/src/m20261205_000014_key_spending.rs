//! Daily spending of each client key, kept up to date by the record writer (in each batch's
//! transaction, like the hourly rollups), so a budget check reads a row a day, not the month's
//! requests.
//!
//! Summing `requests` for each key every 2 s read the whole month's history: under a benchmark's
//! flood of a million requests, 18,000 pages every 2 s, and the work grew with the history. The
//! days are also kept when the history itself is trimmed sooner than a month, so a key's month
//! still counts every request of it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// Creates `key_spending` and fills it from `requests`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KeySpending {
    Table,
    Day,
    ApiKey,
    Requests,
    CostUsd,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(KeySpending::Table)
                    // The day as `YYYY-MM-DD` (UTC).
                    .col(ColumnDef::new(KeySpending::Day).string().not_null())
                    // The key's name, as in `requests.api_key`.
                    .col(ColumnDef::new(KeySpending::ApiKey).string().not_null())
                    .col(
                        ColumnDef::new(KeySpending::Requests)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(KeySpending::CostUsd)
                            .double()
                            .not_null()
                            .default(0.0),
                    )
                    .primary_key(
                        Index::create()
                            .col(KeySpending::Day)
                            .col(KeySpending::ApiKey),
                    )
                    .to_owned(),
            )
            .await?;
        let day = match manager.get_database_backend() {
            DbBackend::Postgres => "to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            _ => "substr(timestamp, 1, 10)",
        };
        let backfill = format!(
            "INSERT INTO key_spending (day, api_key, requests, cost_usd) \
             SELECT {day}, api_key, COUNT(*), SUM(cost_usd) FROM requests \
             WHERE api_key IS NOT NULL GROUP BY {day}, api_key"
        );
        manager
            .get_connection()
            .execute_unprepared(&backfill)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(KeySpending::Table).to_owned())
            .await
    }
}
