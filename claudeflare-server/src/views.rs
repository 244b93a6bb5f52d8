//! Accounts as the API, the CLI and the dashboard show them: one place that turns the pool's or
//! the database's view into what a person reads.

use chrono::{DateTime, Utc};
use claudeflare_tower::{AccountPool, AccountStatus, AccountView};
use serde_json::{Value, json};

use crate::usage::Usage;

/// The command that signs an account in again.
pub fn reauth_command(name: &str) -> String {
    format!("claudeflare-server reauth {name}")
}

/// Complete a view for people: an account that needs re-authentication says which command to
/// run, after why.
pub fn finish(mut view: AccountView) -> AccountView {
    if view.status == AccountStatus::NeedsReauth {
        let reason = view
            .status_reason
            .take()
            .unwrap_or_else(|| "its credential was refused".to_owned());
        view.status_reason = Some(format!(
            "{reason}; run `{}` to sign in again",
            reauth_command(&view.name)
        ));
    }
    view
}

/// Every account of the pool at `now`, finished.
pub fn accounts(pool: &AccountPool, now: DateTime<Utc>) -> Vec<AccountView> {
    pool.views(now).into_iter().map(finish).collect()
}

/// The account object of `/api/accounts` and `list --json`.
pub fn account_json(view: &AccountView, usage: Option<&Usage>) -> Value {
    let mut value = json!(view);
    value["usage"] = json!(usage);
    value
}
