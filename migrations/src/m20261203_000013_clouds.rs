//! Claude on the clouds: each Bedrock account's region and where its AWS credentials come from,
//! each Vertex AI account's project and region.

use sea_orm_migration::prelude::*;

/// Adds `accounts.region`, `accounts.project` and `accounts.aws_credentials` (`keys`: AWS keys
/// stored encrypted in `api_key`; `api-key`: a Bedrock API key there; `profile:NAME`: read
/// from the AWS credentials file; `environment`: from `AWS_ACCESS_KEY_ID` and the like).
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Region,
    Project,
    AwsCredentials,
}

/// One column at a time: SQLite alters a table one column per statement.
fn columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef::new(Accounts::Region).text().null().to_owned(),
        ColumnDef::new(Accounts::Project).text().null().to_owned(),
        ColumnDef::new(Accounts::AwsCredentials)
            .text()
            .null()
            .to_owned(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
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
        for column in columns().into_iter().rev() {
            manager
                .alter_table(
                    Table::alter()
                        .table(Accounts::Table)
                        .drop_column(column.get_column_name())
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
