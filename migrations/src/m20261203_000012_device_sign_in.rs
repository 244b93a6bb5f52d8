//! Sign-in from Claude Code's `/login` (RFC 8628 device flow): the pending sign-ins, the bearer
//! tokens they become, and a key's email.

use sea_orm_migration::prelude::*;

/// Creates `device_authorizations` and `oauth_tokens`; adds `client_keys.email`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum DeviceAuthorizations {
    Table,
    /// SHA-256 (hex) of the device code; the code itself is never stored.
    DeviceDigest,
    UserCode,
    CreatedAt,
    ExpiresAt,
    IntervalSeconds,
    /// `pending`, `approved`, `denied` or `used`.
    State,
    KeyName,
    UserAgent,
    Surface,
    LastPollAt,
}

#[derive(DeriveIden)]
enum OauthTokens {
    Table,
    /// SHA-256 (hex) of the token.
    Digest,
    /// `access` or `refresh`.
    Kind,
    KeyName,
    /// The sign-in both tokens of a pair come from: revoking a refresh token ends its access
    /// tokens too.
    Grant,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum ClientKeys {
    Table,
    Email,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DeviceAuthorizations::Table)
                    .col(
                        ColumnDef::new(DeviceAuthorizations::DeviceDigest)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(DeviceAuthorizations::UserCode)
                            .text()
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(DeviceAuthorizations::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(DeviceAuthorizations::ExpiresAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(DeviceAuthorizations::IntervalSeconds)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(DeviceAuthorizations::State)
                            .text()
                            .not_null(),
                    )
                    .col(ColumnDef::new(DeviceAuthorizations::KeyName).text().null())
                    .col(
                        ColumnDef::new(DeviceAuthorizations::UserAgent)
                            .text()
                            .null(),
                    )
                    .col(ColumnDef::new(DeviceAuthorizations::Surface).text().null())
                    .col(
                        ColumnDef::new(DeviceAuthorizations::LastPollAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OauthTokens::Table)
                    .col(
                        ColumnDef::new(OauthTokens::Digest)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(OauthTokens::Kind).text().not_null())
                    .col(ColumnDef::new(OauthTokens::KeyName).text().not_null())
                    .col(ColumnDef::new(OauthTokens::Grant).text().not_null())
                    .col(
                        ColumnDef::new(OauthTokens::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OauthTokens::ExpiresAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ClientKeys::Table)
                    .add_column(ColumnDef::new(ClientKeys::Email).text().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ClientKeys::Table)
                    .drop_column(ClientKeys::Email)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(OauthTokens::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(DeviceAuthorizations::Table).to_owned())
            .await
    }
}
