//! Database migrations of claudeflare-server. The same migrations run on SQLite (the embedded
//! default) and PostgreSQL; the server applies them at start.

use sea_orm_migration::prelude::*;

mod m20261121_000001_init;
mod m20261121_000002_token_coordination;
mod m20261121_000003_request_rollups;
mod m20261122_000004_drop_unused_request_index;
mod m20261129_000005_account_blocks;
mod m20261129_000006_client_keys;
mod m20261130_000007_several_instances;
mod m20261130_000008_keyed_requests_index;
mod m20261202_000009_prices_as_data;
mod m20261202_000010_key_models;
mod m20261203_000011_providers;
mod m20261203_000012_device_sign_in;
mod m20261203_000013_clouds;
mod m20261205_000014_key_spending;

/// Every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_init::Migration),
            Box::new(m20261121_000002_token_coordination::Migration),
            Box::new(m20261121_000003_request_rollups::Migration),
            Box::new(m20261122_000004_drop_unused_request_index::Migration),
            Box::new(m20261129_000005_account_blocks::Migration),
            Box::new(m20261129_000006_client_keys::Migration),
            Box::new(m20261130_000007_several_instances::Migration),
            Box::new(m20261130_000008_keyed_requests_index::Migration),
            Box::new(m20261202_000009_prices_as_data::Migration),
            Box::new(m20261202_000010_key_models::Migration),
            Box::new(m20261203_000011_providers::Migration),
            Box::new(m20261203_000012_device_sign_in::Migration),
            Box::new(m20261203_000013_clouds::Migration),
            Box::new(m20261205_000014_key_spending::Migration),
        ]
    }
}
