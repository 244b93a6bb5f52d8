//! Drops `idx_requests_account_timestamp`: no query reads the history by account id, and every
//! recorded request paid for keeping it up to date (one more B-tree insert per row).

use sea_orm_migration::prelude::*;

/// Drops the unused index.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Requests {
    Table,
    AccountId,
    Timestamp,
}

const NAME: &str = "idx_requests_account_timestamp";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(NAME).table(Requests::Table).to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table(Requests::Table)
                    .col(Requests::AccountId)
                    .col(Requests::Timestamp)
                    .to_owned(),
            )
            .await
    }
}
