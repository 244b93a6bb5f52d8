//! Client keys (who may use the balancer and its API), and the key each request came with.

use sea_orm_migration::prelude::*;

/// Creates `client_keys`, and adds `api_key` (the client key's name) to `requests`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ClientKeys {
    Table,
    Id,
    Name,
    Hash,
    Hint,
    Admin,
    Rpm,
    Concurrency,
    MonthlyBudgetUsd,
    CreatedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum Requests {
    Table,
    ApiKey,
    Timestamp,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ClientKeys::Table)
                    .col(
                        ColumnDef::new(ClientKeys::Id)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ClientKeys::Name)
                            .text()
                            .not_null()
                            .unique_key(),
                    )
                    // SHA-256 of the key, hex: the key itself is never stored.
                    .col(
                        ColumnDef::new(ClientKeys::Hash)
                            .text()
                            .not_null()
                            .unique_key(),
                    )
                    // The key's first characters, to recognise it in a list.
                    .col(ColumnDef::new(ClientKeys::Hint).text().not_null())
                    .col(
                        ColumnDef::new(ClientKeys::Admin)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(ColumnDef::new(ClientKeys::Rpm).big_integer().null())
                    .col(ColumnDef::new(ClientKeys::Concurrency).big_integer().null())
                    .col(ColumnDef::new(ClientKeys::MonthlyBudgetUsd).double().null())
                    .col(
                        ColumnDef::new(ClientKeys::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ClientKeys::LastUsedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Requests::Table)
                    .add_column(ColumnDef::new(Requests::ApiKey).text().null())
                    .to_owned(),
            )
            .await?;
        // Requests and cost of a key this month: the key's requests by time.
        manager
            .create_index(
                Index::create()
                    .name("requests_api_key_timestamp")
                    .table(Requests::Table)
                    .col(Requests::ApiKey)
                    .col(Requests::Timestamp)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("requests_api_key_timestamp")
                    .table(Requests::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Requests::Table)
                    .drop_column(Requests::ApiKey)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(ClientKeys::Table).to_owned())
            .await
    }
}
