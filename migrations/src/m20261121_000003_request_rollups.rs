//! Hourly rollups of the request history (per account and model), kept up to date by the record
//! writer, so the dashboard and `/api/stats` aggregate a few hundred rows, not the whole history.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// Creates `request_rollups` and fills it from `requests`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RequestRollups {
    Table,
    Hour,
    Account,
    Model,
    Requests,
    Successes,
    ResponseTimeMs,
    InputTokens,
    OutputTokens,
    CacheReadInputTokens,
    CacheCreationInputTokens,
    CostUsd,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let counter = |column| {
            ColumnDef::new(column)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned()
        };
        manager
            .create_table(
                Table::create()
                    .table(RequestRollups::Table)
                    // The hour as `YYYY-MM-DDTHH` (UTC); '' for requests without an account or model.
                    .col(ColumnDef::new(RequestRollups::Hour).string().not_null())
                    .col(ColumnDef::new(RequestRollups::Account).string().not_null())
                    .col(ColumnDef::new(RequestRollups::Model).string().not_null())
                    .col(counter(RequestRollups::Requests))
                    .col(counter(RequestRollups::Successes))
                    .col(counter(RequestRollups::ResponseTimeMs))
                    .col(counter(RequestRollups::InputTokens))
                    .col(counter(RequestRollups::OutputTokens))
                    .col(counter(RequestRollups::CacheReadInputTokens))
                    .col(counter(RequestRollups::CacheCreationInputTokens))
                    .col(
                        ColumnDef::new(RequestRollups::CostUsd)
                            .double()
                            .not_null()
                            .default(0.0),
                    )
                    .primary_key(
                        Index::create()
                            .col(RequestRollups::Hour)
                            .col(RequestRollups::Account)
                            .col(RequestRollups::Model),
                    )
                    .to_owned(),
            )
            .await?;
        let hour = match manager.get_database_backend() {
            DbBackend::Postgres => "to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24')",
            _ => "substr(timestamp, 1, 13)",
        };
        let backfill = format!(
            "INSERT INTO request_rollups (hour, account, model, requests, successes, response_time_ms, input_tokens, \
             output_tokens, cache_read_input_tokens, cache_creation_input_tokens, cost_usd) \
             SELECT {hour}, COALESCE(account_name, ''), COALESCE(model, ''), COUNT(*), \
             SUM(CASE WHEN success THEN 1 ELSE 0 END), SUM(response_time_ms), SUM(input_tokens), SUM(output_tokens), \
             SUM(cache_read_input_tokens), SUM(cache_creation_input_tokens), SUM(cost_usd) \
             FROM requests GROUP BY {hour}, COALESCE(account_name, ''), COALESCE(model, '')"
        );
        manager
            .get_connection()
            .execute_unprepared(&backfill)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RequestRollups::Table).to_owned())
            .await
    }
}
