//! `pricing update FILE|URL` and `pricing list [--json]`.

use serde::Serialize;

use super::{open, print_table};
use crate::cli::PricingCommand;
use crate::pricing::{self, ModelPrices, Price};

/// `pricing list --json`.
#[derive(Serialize)]
struct Listing<'a> {
    as_of: chrono::NaiveDate,
    /// "built in", or when and from where it was installed.
    origin: String,
    source: Option<&'a str>,
    models: &'a [ModelPrices],
    /// The config file's `pricing`, which wins over `models`.
    overrides: &'a std::collections::BTreeMap<String, Price>,
}

/// `pricing …`.
pub async fn pricing(command: PricingCommand) -> anyhow::Result<()> {
    match command {
        PricingCommand::Update { source } => update(&source).await,
        PricingCommand::List { json } => list(json).await,
    }
}

async fn update(source: &str) -> anyhow::Result<()> {
    // Read and check it before the database is touched: a bad catalogue changes nothing.
    let catalogue = pricing::read_checked(source).await?;
    let context = open().await?;
    let source = pricing::shown(source);
    pricing::store(&context.db, &catalogue, &source).await?;
    println!(
        "Installed the price catalogue of {source}: {} models, as of {}. Servers on this database use it within 2 seconds, and at every start.",
        catalogue.models.len(),
        catalogue.as_of
    );
    Ok(())
}

async fn list(json: bool) -> anyhow::Result<()> {
    let context = open().await?;
    let table = pricing::load_in_force(&context.db).await?;
    let overrides = &context.config.pricing;
    let catalogue = table.catalogue();
    if json {
        let listing = Listing {
            as_of: catalogue.as_of,
            origin: table.origin().to_string(),
            source: catalogue.source.as_deref(),
            models: &catalogue.models,
            overrides,
        };
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(());
    }
    println!(
        "Price catalogue as of {} ({}), {} models; USD per million tokens.",
        catalogue.as_of,
        table.origin(),
        catalogue.models.len()
    );
    let header = [
        "MODEL", "FROM", "INPUT", "OUTPUT", "5M WRITE", "1H WRITE", "READ", "ALSO",
    ];
    let mut rows = Vec::new();
    for model in &catalogue.models {
        for (index, price) in model.prices.iter().enumerate() {
            let name = if index == 0 { model.model.as_str() } else { "" };
            let mut also = if index == 0 {
                model.aliases.clone()
            } else {
                Vec::new()
            };
            also.extend(notes(price));
            rows.push(row(name, price, &also));
        }
    }
    print_table(&header, &rows);
    if !overrides.is_empty() {
        println!();
        println!("Overrides of the config file's `pricing` (they win over the catalogue):");
        let rows: Vec<Vec<String>> = overrides
            .iter()
            .map(|(key, price)| row(key, price, &notes(price)))
            .collect();
        print_table(&header, &rows);
    }
    Ok(())
}

fn row(model: &str, price: &Price, also: &[String]) -> Vec<String> {
    let rates = price.base();
    vec![
        model.to_owned(),
        price
            .effective_from
            .map_or_else(|| "-".to_owned(), |from| from.to_string()),
        money(rates.input),
        money(rates.output),
        money(rates.write_5m),
        money(rates.write_1h),
        money(rates.read),
        also.join(", "),
    ]
}

/// Bands, fast prices and region multipliers, in a few words each.
fn notes(price: &Price) -> Vec<String> {
    let mut notes = Vec::new();
    for band in &price.bands {
        notes.push(format!(
            "over {} prompt tokens: {}/{}",
            band.above_prompt_tokens,
            money(band.input),
            money(band.output)
        ));
    }
    if let Some(fast) = &price.fast {
        notes.push(format!(
            "fast: {}/{}",
            money(fast.input),
            money(fast.output)
        ));
    }
    for (geo, multiplier) in &price.inference_geo {
        notes.push(format!("{geo}: ×{multiplier}"));
    }
    notes
}

fn money(amount: f64) -> String {
    let text = format!("{amount:.4}");
    let text = text.trim_end_matches('0');
    let text = text.strip_suffix('.').unwrap_or(text);
    format!("${text}")
}
