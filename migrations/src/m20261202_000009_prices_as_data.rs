//! Prices as data: the installed price catalogues, the model each request asked for, and
//! whether its cost was priced.
//!
//! `requests.price_known` is false for a request whose model had no price (costed 0). Requests
//! stored before it existed are marked unpriced when they used tokens and cost nothing: those
//! are the ones an older price table missed. The hourly rollups count them too
//! (`unpriced_requests`), so `/api/stats` names the models without aggregating the history.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// Creates `pricing_catalogues`; adds `requests.requested_model`, `requests.price_known` and
/// `request_rollups.unpriced_requests`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PricingCatalogues {
    Table,
    Id,
    InstalledAt,
    Origin,
    AsOf,
    Catalogue,
}

#[derive(DeriveIden)]
enum Requests {
    Table,
    RequestedModel,
    PriceKnown,
}

#[derive(DeriveIden)]
enum RequestRollups {
    Table,
    UnpricedRequests,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PricingCatalogues::Table)
                    .col(
                        ColumnDef::new(PricingCatalogues::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(PricingCatalogues::InstalledAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    // The file or URL it was read from.
                    .col(ColumnDef::new(PricingCatalogues::Origin).text().not_null())
                    .col(ColumnDef::new(PricingCatalogues::AsOf).text().not_null())
                    // The catalogue, as JSON.
                    .col(
                        ColumnDef::new(PricingCatalogues::Catalogue)
                            .text()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Requests::Table)
                    .add_column(ColumnDef::new(Requests::RequestedModel).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Requests::Table)
                    .add_column(
                        ColumnDef::new(Requests::PriceKnown)
                            .boolean()
                            .not_null()
                            .default(true),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(RequestRollups::Table)
                    .add_column(
                        ColumnDef::new(RequestRollups::UnpricedRequests)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        db.execute_unprepared(
            "UPDATE requests SET price_known = FALSE WHERE cost_usd = 0 AND model IS NOT NULL \
             AND (input_tokens + output_tokens + cache_read_input_tokens + cache_creation_input_tokens) > 0",
        )
        .await?;
        let hour = match manager.get_database_backend() {
            DbBackend::Postgres => "to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24')",
            _ => "substr(timestamp, 1, 13)",
        };
        db.execute_unprepared(&format!(
            "UPDATE request_rollups SET unpriced_requests = unpriced.requests FROM \
             (SELECT {hour} AS hour, COALESCE(account_name, '') AS account, COALESCE(model, '') AS model, \
             COUNT(*) AS requests FROM requests WHERE NOT price_known GROUP BY 1, 2, 3) AS unpriced \
             WHERE request_rollups.hour = unpriced.hour AND request_rollups.account = unpriced.account \
             AND request_rollups.model = unpriced.model"
        ))
        .await
        .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(RequestRollups::Table)
                    .drop_column(RequestRollups::UnpricedRequests)
                    .to_owned(),
            )
            .await?;
        for column in [Requests::PriceKnown, Requests::RequestedModel] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Requests::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(PricingCatalogues::Table).to_owned())
            .await
    }
}
