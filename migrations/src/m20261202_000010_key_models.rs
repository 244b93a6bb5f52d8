//! The models a client key may ask for (`keys add … --models`).

use sea_orm_migration::prelude::*;

/// Adds `client_keys.models`: the allowed ids, comma-separated; null for any.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ClientKeys {
    Table,
    Models,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ClientKeys::Table)
                    .add_column(ColumnDef::new(ClientKeys::Models).text().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ClientKeys::Table)
                    .drop_column(ClientKeys::Models)
                    .to_owned(),
            )
            .await
    }
}
