//! What today's upstream tells about an account beyond rate limits: a ban (`forbidden`), why an
//! account is out of rotation in words (`status_reason`), and when the utilization windows reset.

use sea_orm_migration::prelude::*;

/// Adds `forbidden`, `status_reason`, `utilization_5h_reset` and `utilization_7d_reset` to
/// `accounts`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Forbidden,
    StatusReason,
    #[sea_orm(iden = "utilization_5h_reset")]
    Utilization5hReset,
    #[sea_orm(iden = "utilization_7d_reset")]
    Utilization7dReset,
}

fn columns() -> [ColumnDef; 4] {
    [
        ColumnDef::new(Accounts::Forbidden)
            .boolean()
            .not_null()
            .default(false)
            .to_owned(),
        ColumnDef::new(Accounts::StatusReason)
            .text()
            .null()
            .to_owned(),
        ColumnDef::new(Accounts::Utilization5hReset)
            .timestamp_with_time_zone()
            .null()
            .to_owned(),
        ColumnDef::new(Accounts::Utilization7dReset)
            .timestamp_with_time_zone()
            .null()
            .to_owned(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite cannot add several in one ALTER TABLE.
        for mut column in columns() {
            manager
                .alter_table(
                    Table::alter()
                        .table(Accounts::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            Accounts::Utilization7dReset,
            Accounts::Utilization5hReset,
            Accounts::StatusReason,
            Accounts::Forbidden,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Accounts::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
