//! The catalogue: every provider Tollgate can connect to, and the default
//! price and limits of known models. Both ship as data inside the binary
//! (`data/providers.json`, `data/prices.json`); the price table can be
//! replaced at run time from a JSON file of the same shape
//! (`tollgate prices import`).

use crate::money::Price;
use crate::token_usage::ModelPrice;
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// A wire protocol: one adapter module per protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// OpenAI's API and every OpenAI-compatible provider.
    #[serde(rename = "openai")]
    OpenAi,
    #[serde(rename = "azure-openai")]
    AzureOpenAi,
    #[serde(rename = "anthropic")]
    Anthropic,
    #[serde(rename = "bedrock")]
    Bedrock,
    #[serde(rename = "vertex-ai")]
    VertexAi,
    /// Google's Gemini API.
    #[serde(rename = "google")]
    Google,
}

/// One field of a provider's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialField {
    pub name: String,
    /// Secret fields are sealed at rest and only ever shown masked.
    pub secret: bool,
    pub required: bool,
}

/// A provider Tollgate can connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderSpec {
    pub id: String,
    pub name: String,
    pub protocol: Protocol,
    pub default_base_url: Option<String>,
    pub credential_fields: Vec<CredentialField>,
}

impl ProviderSpec {
    pub fn field(&self, name: &str) -> Option<&CredentialField> {
        self.credential_fields.iter().find(|f| f.name == name)
    }
}

#[derive(Deserialize)]
struct ProvidersFile {
    providers: Vec<ProviderSpec>,
}

/// The providers shipped with this binary.
pub fn providers() -> &'static [ProviderSpec] {
    static P: OnceLock<Vec<ProviderSpec>> = OnceLock::new();
    P.get_or_init(|| {
        // The file is part of the binary and checked by a unit test, so a
        // failure here is a build defect; an empty list keeps the server up.
        serde_json::from_str::<ProvidersFile>(include_str!("../data/providers.json"))
            .map(|f| f.providers)
            .unwrap_or_default()
    })
}

/// The shipped provider with this id.
pub fn provider(id: &str) -> Option<&'static ProviderSpec> {
    providers().iter().find(|p| p.id == id)
}

/// Which tokenizer estimates a model's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Tokenizer {
    O200kBase,
    #[default]
    Cl100kBase,
}

/// What the catalogue knows of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelInfo {
    pub price: ModelPrice,
    /// The most a single answer can hold; the worst case for reservations.
    pub max_output_tokens: Option<u64>,
    pub tokenizer: Tokenizer,
}

/// A price table: `(provider id, model) → ModelInfo`.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    pub taken_at: String,
    models: HashMap<(String, String), ModelInfo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    taken_at: String,
    #[serde(default)]
    #[allow(dead_code)]
    unit: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    source: Option<String>,
    models: Vec<PriceRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceRow {
    provider: String,
    model: String,
    input: DecimalText,
    output: DecimalText,
    #[serde(default)]
    cached_input: Option<DecimalText>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    tokenizer: Option<Tokenizer>,
}

/// A decimal given as a JSON string or number, kept as its text.
#[derive(Deserialize)]
#[serde(untagged)]
enum DecimalText {
    Text(String),
    Number(serde_json::Number),
}

impl DecimalText {
    fn price(&self, what: &str, model: &str) -> Result<Price, String> {
        let text = match self {
            DecimalText::Text(s) => s.clone(),
            DecimalText::Number(n) => n.to_string(),
        };
        Price::parse_usd_per_million(&text)
            .ok_or_else(|| format!("{model}: {what} price {text:?} is not a non-negative decimal"))
    }
}

impl PriceTable {
    /// Parses a price table (USD per million tokens). Errors name the row.
    pub fn from_json(text: &str) -> Result<PriceTable, String> {
        let file: PriceFile = serde_json::from_str(text).map_err(|e| format!("invalid price table: {e}"))?;
        let mut models = HashMap::with_capacity(file.models.len());
        for row in file.models {
            let input = row.input.price("input", &row.model)?;
            let info = ModelInfo {
                price: ModelPrice {
                    input,
                    output: row.output.price("output", &row.model)?,
                    cached_input: match &row.cached_input {
                        Some(c) => c.price("cached_input", &row.model)?,
                        None => input,
                    },
                },
                max_output_tokens: row.max_output_tokens.filter(|n| *n > 0),
                tokenizer: row.tokenizer.unwrap_or_default(),
            };
            models.insert((row.provider, row.model), info);
        }
        Ok(PriceTable {
            taken_at: file.taken_at,
            models,
        })
    }

    /// The table shipped with this binary.
    pub fn shipped() -> &'static PriceTable {
        static T: OnceLock<PriceTable> = OnceLock::new();
        T.get_or_init(|| PriceTable::from_json(include_str!("../data/prices.json")).unwrap_or_default())
    }

    /// What is known of `model` at `provider` (a catalogue provider id).
    /// Falls back to the model's price at its original vendor for resellers
    /// (an OpenAI-compatible provider serving `gpt-4o` is priced as OpenAI's).
    pub fn model(&self, provider: &str, model: &str) -> Option<&ModelInfo> {
        self.models.get(&(provider.to_owned(), model.to_owned()))
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Every `(provider, model)` the table prices, for the model catalogue.
    pub fn models_of<'a>(&'a self, provider: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.models
            .keys()
            .filter(move |(p, _)| p == provider)
            .map(|(_, m)| m.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Money;
    use crate::token_usage::Usage;

    #[test]
    fn shipped_catalogue_parses_and_is_broad() {
        let p = providers();
        assert!(p.len() >= 25, "only {} providers", p.len());
        for proto in [
            Protocol::OpenAi,
            Protocol::AzureOpenAi,
            Protocol::Anthropic,
            Protocol::Bedrock,
            Protocol::VertexAi,
            Protocol::Google,
        ] {
            assert!(p.iter().any(|s| s.protocol == proto), "{proto:?} missing");
        }
        let mut ids: Vec<_> = p.iter().map(|s| &s.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), p.len(), "provider ids must be unique");
        assert!(provider("openai").unwrap().field("key").unwrap().secret);
    }

    #[test]
    fn shipped_prices_parse() {
        let t = PriceTable::shipped();
        assert!(t.len() > 30);
        let gpt4o = t.model("openai", "gpt-4o").unwrap();
        let u = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 0,
            cached_tokens: 0,
        };
        assert_eq!(gpt4o.price.cost(&u), Money::parse_usd("2.5").unwrap());
        assert!(t.models_of("anthropic").count() >= 3);
    }

    #[test]
    fn price_tables_reject_bad_rows_with_the_row_named() {
        let e = PriceTable::from_json(
            r#"{"taken_at":"x","models":[{"provider":"p","model":"m1","input":"-1","output":1}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("m1"), "{e}");
        assert!(PriceTable::from_json(r#"{"taken_at":"x","models":[],"extra":1}"#).is_err());
        let ok = PriceTable::from_json(
            r#"{"taken_at":"x","models":[{"provider":"p","model":"m","input":0.5,"output":"1"}]}"#,
        )
        .unwrap();
        assert_eq!(
            ok.model("p", "m").unwrap().price.cached_input,
            Price::parse_usd_per_million("0.5").unwrap()
        );
    }
}
