//! The index for a client key's requests covers only requests made with a key.
//!
//! The `(api_key, timestamp)` index serves the spending of each key (`api_key IS NOT NULL AND
//! timestamp >= …`) and `/api/requests?api_key=…`; both only ever look for requests with a key.
//! Indexing the requests without one (all of them, on a server with no client key) cost an
//! insert into one more B-tree for every record: about a fifth of SQLite's work per record.
//! SQLite and PostgreSQL both use a partial index for any query whose `WHERE` implies its own.

use sea_orm_migration::prelude::*;

/// Replaces `requests_api_key_timestamp` with the partial `requests_keyed_timestamp`.
#[derive(DeriveMigrationName)]
pub struct Migration;

/// The index of 000006, on every request.
const OLD: &str = "requests_api_key_timestamp";
/// The same columns, on requests made with a key only. A new name, not the old one again: the
/// migrations' statements may run on different pooled connections, and SQLite checks a new
/// index's name against a connection's cached schema, which may not have seen the drop yet.
const NEW: &str = "requests_keyed_timestamp";

#[derive(DeriveIden)]
enum Requests {
    Table,
    ApiKey,
    Timestamp,
}

fn index(name: &str, partial: bool) -> IndexCreateStatement {
    let mut index = Index::create();
    index
        .name(name)
        .table(Requests::Table)
        .col(Requests::ApiKey)
        .col(Requests::Timestamp);
    if partial {
        index.and_where(Expr::col(Requests::ApiKey).is_not_null());
    }
    index.to_owned()
}

/// Create the index `to` (partial or not), then drop `from`.
async fn replace(
    manager: &SchemaManager<'_>,
    from: &str,
    to: &str,
    partial: bool,
) -> Result<(), DbErr> {
    manager.create_index(index(to, partial)).await?;
    manager
        .drop_index(Index::drop().name(from).table(Requests::Table).to_owned())
        .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace(manager, OLD, NEW, true).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace(manager, NEW, OLD, false).await
    }
}
