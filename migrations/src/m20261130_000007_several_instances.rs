//! Several instances on one database: a version of each account's live state, bumped by every
//! write of it, so an instance sees at a glance that another one changed it (see the server's
//! `store` module); and the dashboard's login sessions, so a login on one instance holds on all.

use sea_orm_migration::prelude::*;

/// Adds `live_version` to `accounts`; creates `dashboard_sessions`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Accounts {
    Table,
    LiveVersion,
}

#[derive(DeriveIden)]
enum DashboardSessions {
    Table,
    /// SHA-256 of the cookie's value, hex: the value itself is stored nowhere.
    Digest,
    KeyName,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Accounts::Table)
                    .add_column(
                        ColumnDef::new(Accounts::LiveVersion)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DashboardSessions::Table)
                    .col(
                        ColumnDef::new(DashboardSessions::Digest)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(DashboardSessions::KeyName).text().not_null())
                    .col(
                        ColumnDef::new(DashboardSessions::ExpiresAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(DashboardSessions::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Accounts::Table)
                    .drop_column(Accounts::LiveVersion)
                    .to_owned(),
            )
            .await
    }
}
