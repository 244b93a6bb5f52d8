//! Several providers in one pool: each account's provider, base URL, header style, priority,
//! model map and egress proxy; the provider of each request; the accounts a client key may use.

use sea_orm_migration::prelude::*;

/// Adds `accounts.base_url`, `accounts.auth_header`, `accounts.priority`, `accounts.model_map`
/// (`PATTERN=MODEL,…`), `accounts.proxy` (encrypted, as the credentials are),
/// `accounts.account_group`, `requests.provider` and `client_keys.accounts` (account or group
/// names, comma-separated; null for all).
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Accounts {
    Table,
    BaseUrl,
    AuthHeader,
    Priority,
    ModelMap,
    Proxy,
    AccountGroup,
}

#[derive(DeriveIden)]
enum Requests {
    Table,
    Provider,
}

#[derive(DeriveIden)]
enum ClientKeys {
    Table,
    Accounts,
}

/// One column at a time: SQLite alters a table one column per statement.
fn columns() -> Vec<(DynIden, ColumnDef)> {
    let accounts = || Accounts::Table.into_iden();
    vec![
        (
            accounts(),
            ColumnDef::new(Accounts::BaseUrl).text().null().to_owned(),
        ),
        (
            accounts(),
            ColumnDef::new(Accounts::AuthHeader)
                .text()
                .null()
                .to_owned(),
        ),
        (
            accounts(),
            ColumnDef::new(Accounts::Priority)
                .integer()
                .not_null()
                .default(0)
                .to_owned(),
        ),
        (
            accounts(),
            ColumnDef::new(Accounts::ModelMap).text().null().to_owned(),
        ),
        (
            accounts(),
            ColumnDef::new(Accounts::Proxy).text().null().to_owned(),
        ),
        (
            accounts(),
            ColumnDef::new(Accounts::AccountGroup)
                .text()
                .null()
                .to_owned(),
        ),
        (
            Requests::Table.into_iden(),
            ColumnDef::new(Requests::Provider).text().null().to_owned(),
        ),
        (
            ClientKeys::Table.into_iden(),
            ColumnDef::new(ClientKeys::Accounts)
                .text()
                .null()
                .to_owned(),
        ),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, mut column) in columns() {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in columns().into_iter().rev() {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .drop_column(column.get_column_name())
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
