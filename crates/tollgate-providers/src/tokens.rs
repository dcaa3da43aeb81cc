//! Token estimation for admission: how many prompt tokens a request will
//! cost before the upstream says so, counted with tiktoken.
//!
//! This runs on the hot path (every admitted request), so each BPE is built
//! once per process and shared. Chat messages are counted the way OpenAI's
//! cookbook documents it: 3 tokens of framing per message, 1 more when a
//! message has a `name`, and 3 to prime the reply. Figures for images and
//! tool definitions are estimates (OpenAI does not publish an exact rule);
//! they lean high, since the estimate feeds worst-case reservations.

use crate::Endpoint;
use serde_json::Value;
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;
use tollgate_core::catalogue::Tokenizer;

/// Framing tokens around each chat message (`<|start|>role<|message|>…<|end|>`).
const TOKENS_PER_MESSAGE: u64 = 3;
/// Extra token for a message's `name`.
const TOKENS_PER_NAME: u64 = 1;
/// Every reply is primed with `<|start|>assistant<|message|>`.
const REPLY_PRIMING: u64 = 3;
/// An image at `detail: low` costs a flat 85 tokens.
const IMAGE_LOW: u64 = 85;
/// Image sizes are unknown without fetching them: assume a 1024×1024 image
/// at high detail (85 + 4 tiles × 170).
const IMAGE_DEFAULT: u64 = 765;
/// Per tool definition and for the tool section as a whole (observed
/// overheads of OpenAI's function-calling prompt format).
const TOKENS_PER_TOOL: u64 = 7;
const TOOLS_OVERHEAD: u64 = 12;

fn bpe(tokenizer: Tokenizer) -> Option<&'static CoreBPE> {
    static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    match tokenizer {
        Tokenizer::O200kBase => O200K.get_or_init(|| tiktoken_rs::o200k_base().ok()),
        Tokenizer::Cl100kBase => CL100K.get_or_init(|| tiktoken_rs::cl100k_base().ok()),
    }
    .as_ref()
}

/// Builds the tokenizers now rather than on the first request (they take a
/// few hundred milliseconds each).
pub fn warm_up() {
    let _ = bpe(Tokenizer::O200kBase);
    let _ = bpe(Tokenizer::Cl100kBase);
}

/// Tokens in `text`. Special-token markers are counted as plain text, as an
/// upstream does for user content.
pub fn count_text(text: &str, tokenizer: Tokenizer) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match bpe(tokenizer) {
        Some(b) => b.encode_ordinary(text).len() as u64,
        // The vocabularies ship inside tiktoken-rs, so this only happens on a
        // broken build; a byte-based guess keeps admission working.
        None => (text.len() as u64).div_ceil(3),
    }
}

/// Texts up to this many bytes are bounded by their length in
/// [`prompt_upper_bound`] instead of being tokenized.
pub const SHORT_TEXT_BYTES: usize = 64;

/// How texts are counted.
#[derive(Clone, Copy)]
struct Counter {
    tokenizer: Tokenizer,
    /// Bound short texts by their byte length (every token is at least one
    /// byte, so this never undercounts) instead of running the tokenizer.
    bound_short: bool,
}

impl Counter {
    fn count(self, text: &str) -> u64 {
        if self.bound_short && text.len() <= SHORT_TEXT_BYTES {
            text.len() as u64
        } else {
            count_text(text, self.tokenizer)
        }
    }
}

/// Estimated prompt tokens of an OpenAI-format request to `endpoint`, every
/// text tokenized: what the request log records when an upstream reports no
/// usage.
pub fn estimate_prompt(endpoint: Endpoint, body: &Value, tokenizer: Tokenizer) -> u64 {
    prompt(
        endpoint,
        body,
        Counter {
            tokenizer,
            bound_short: false,
        },
    )
}

/// An upper bound of the prompt tokens, for worst-case reservations: as
/// [`estimate_prompt`], except that short texts (roles, short turns, at most
/// [`SHORT_TEXT_BYTES`] bytes) count one token per byte, which can only
/// overcount, by a few dozen tokens at most, and spares the tokenizer on
/// the hot path for them. Never less than [`estimate_prompt`].
pub fn prompt_upper_bound(endpoint: Endpoint, body: &Value, tokenizer: Tokenizer) -> u64 {
    prompt(
        endpoint,
        body,
        Counter {
            tokenizer,
            bound_short: true,
        },
    )
}

fn prompt(endpoint: Endpoint, body: &Value, tok: Counter) -> u64 {
    match endpoint {
        Endpoint::ChatCompletions => chat(body, tok),
        Endpoint::Completions => prompt_like(body.get("prompt"), tok),
        Endpoint::Embeddings => prompt_like(body.get("input"), tok),
        // Native bodies: every text of the prompt's fields, with the chat
        // framing per item, and images as chat counts them.
        Endpoint::Responses => ["instructions", "input", "tools", "text"]
            .iter()
            .filter_map(|k| body.get(*k))
            .map(|v| texts(v, tok))
            .sum::<u64>()
            .saturating_add(REPLY_PRIMING),
        Endpoint::Messages => ["system", "messages", "tools"]
            .iter()
            .filter_map(|k| body.get(*k))
            .map(|v| texts(v, tok))
            .sum::<u64>()
            .saturating_add(REPLY_PRIMING),
    }
}

/// Every string in a native (Responses or Messages) prompt value: each
/// object costs the framing of a message, an image the chat estimate,
/// schemas are counted as their JSON text.
fn texts(v: &Value, tok: Counter) -> u64 {
    match v {
        Value::String(s) => tok.count(s),
        Value::Array(items) => items.iter().map(|i| texts(i, tok)).sum(),
        Value::Object(o) => {
            if matches!(
                o.get("type").and_then(Value::as_str),
                Some("image" | "input_image" | "image_url" | "document" | "input_file")
            ) {
                return IMAGE_DEFAULT;
            }
            TOKENS_PER_MESSAGE
                + o.iter()
                    .map(|(k, v)| match k.as_str() {
                        "parameters" | "input_schema" | "schema" | "input" if v.is_object() => {
                            tok.count(&v.to_string())
                        }
                        "type" | "id" | "call_id" | "tool_use_id" | "status" | "cache_control" => 0,
                        _ => texts(v, tok),
                    })
                    .sum::<u64>()
        }
        _ => 0,
    }
}

fn chat(body: &Value, tok: Counter) -> u64 {
    let mut n = 0;
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for m in messages {
            n += TOKENS_PER_MESSAGE;
            let Some(m) = m.as_object() else { continue };
            for (key, value) in m {
                n += match key.as_str() {
                    "content" => content(value, tok),
                    "name" => TOKENS_PER_NAME + value.as_str().map_or(0, |s| tok.count(s)),
                    "tool_calls" => tool_calls(value, tok),
                    "function_call" => function(value, tok),
                    _ => value.as_str().map_or(0, |s| tok.count(s)),
                };
            }
        }
        n += REPLY_PRIMING;
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        if !tools.is_empty() {
            n += TOOLS_OVERHEAD;
            for t in tools {
                n += TOKENS_PER_TOOL + t.get("function").map_or(0, |f| tool_definition(f, tok));
            }
        }
    }
    if let Some(functions) = body.get("functions").and_then(Value::as_array) {
        if !functions.is_empty() {
            n += TOOLS_OVERHEAD;
            for f in functions {
                n += TOKENS_PER_TOOL + tool_definition(f, tok);
            }
        }
    }
    n
}

fn content(value: &Value, tok: Counter) -> u64 {
    match value {
        Value::String(s) => tok.count(s),
        Value::Array(parts) => parts.iter().map(|p| part(p, tok)).sum(),
        _ => 0,
    }
}

fn part(p: &Value, tok: Counter) -> u64 {
    match p.get("type").and_then(Value::as_str) {
        Some("text") => p.get("text").and_then(Value::as_str).map_or(0, |s| tok.count(s)),
        Some("image_url") => {
            let detail = p.pointer("/image_url/detail").and_then(Value::as_str);
            if detail == Some("low") {
                IMAGE_LOW
            } else {
                IMAGE_DEFAULT
            }
        }
        // Refusals, audio transcripts and other textual parts.
        _ => p
            .as_object()
            .map(|o| o.values().filter_map(Value::as_str).map(|s| tok.count(s)).sum())
            .unwrap_or(0),
    }
}

fn tool_calls(value: &Value, tok: Counter) -> u64 {
    value
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| TOKENS_PER_MESSAGE + c.get("function").map_or(0, |f| function(f, tok)))
                .sum()
        })
        .unwrap_or(0)
}

fn function(f: &Value, tok: Counter) -> u64 {
    let text = |k: &str| f.get(k).and_then(Value::as_str).map_or(0, |s| tok.count(s));
    text("name") + text("arguments")
}

fn tool_definition(f: &Value, tok: Counter) -> u64 {
    let text = |k: &str| f.get(k).and_then(Value::as_str).map_or(0, |s| tok.count(s));
    let params = f.get("parameters").map_or(0, |p| tok.count(&p.to_string()));
    text("name") + text("description") + params
}

/// A completions `prompt` or embeddings `input`: a string, an array of
/// strings, an array of token ids, or an array of token-id arrays.
fn prompt_like(value: Option<&Value>, tok: Counter) -> u64 {
    match value {
        Some(Value::String(s)) => tok.count(s),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => tok.count(s),
                Value::Number(_) => 1,
                Value::Array(ids) => ids.len() as u64,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod native_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn native_prompts_count_every_text_and_bound_the_exact_count() {
        let t = Tokenizer::O200kBase;
        let long = "word ".repeat(200);
        let responses = json!({"instructions": "Be brief.", "input": [{"role": "user", "content": [{"type": "input_text", "text": long}]}]});
        let exact = estimate_prompt(Endpoint::Responses, &responses, t);
        assert!(exact >= 200, "{exact}");
        assert!(prompt_upper_bound(Endpoint::Responses, &responses, t) >= exact);
        let messages = json!({"system": "Be brief.", "messages": [{"role": "user", "content": long}],
                              "tools": [{"name": "f", "input_schema": {"type": "object"}}]});
        let m = estimate_prompt(Endpoint::Messages, &messages, t);
        assert!(m > exact - 10 && m < exact + 40, "{m} vs {exact}");
        let image = json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"data": long}}]}]});
        assert!(estimate_prompt(Endpoint::Messages, &image, t) < 800);
        assert_eq!(estimate_prompt(Endpoint::Messages, &json!({}), t), REPLY_PRIMING);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_upper_bound_never_undercounts_and_tokenizes_long_texts() {
        let long = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        for body in [
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": long}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "日本語のテキスト"}]}]}),
        ] {
            for t in [Tokenizer::Cl100kBase, Tokenizer::O200kBase] {
                let exact = estimate_prompt(Endpoint::ChatCompletions, &body, t);
                let bound = prompt_upper_bound(Endpoint::ChatCompletions, &body, t);
                assert!(bound >= exact, "{bound} < {exact} for {body}");
            }
        }
        // A long text is tokenized, not bounded by its length.
        let body = json!({"messages": [{"role": "user", "content": long}]});
        let bound = prompt_upper_bound(Endpoint::ChatCompletions, &body, Tokenizer::O200kBase);
        assert!(bound < long.len() as u64 / 2, "{bound}");
        // A short one is bounded by its bytes.
        let short = json!({"input": "abc"});
        assert_eq!(
            prompt_upper_bound(Endpoint::Embeddings, &short, Tokenizer::O200kBase),
            3
        );
        assert_eq!(estimate_prompt(Endpoint::Embeddings, &short, Tokenizer::O200kBase), 1);
    }

    #[test]
    fn counts_known_strings() {
        // Reference counts from OpenAI's tokenizer.
        assert_eq!(count_text("hello world", Tokenizer::Cl100kBase), 2);
        assert_eq!(count_text("hello world", Tokenizer::O200kBase), 2);
        assert_eq!(count_text("", Tokenizer::O200kBase), 0);
        assert!(count_text("<|endoftext|>", Tokenizer::Cl100kBase) > 1);
        // The vocabularies differ.
        let text = "Tollgate estime les jetons: 日本語のテキスト";
        assert_ne!(
            count_text(text, Tokenizer::Cl100kBase),
            count_text(text, Tokenizer::O200kBase)
        );
    }

    #[test]
    fn chat_follows_the_cookbook_rule() {
        let body = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "name": "bob", "content": "hello world"}
        ]});
        let t = Tokenizer::O200kBase;
        let expected = 3
            + count_text("system", t)
            + count_text("You are helpful.", t)
            + 3
            + count_text("user", t)
            + 1
            + count_text("bob", t)
            + count_text("hello world", t)
            + 3;
        assert_eq!(estimate_prompt(Endpoint::ChatCompletions, &body, t), expected);
    }

    #[test]
    fn chat_counts_parts_images_tool_calls_and_tools() {
        let t = Tokenizer::Cl100kBase;
        let parts = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://x/z.png"}}
        ]}]});
        assert_eq!(
            estimate_prompt(Endpoint::ChatCompletions, &parts, t),
            3 + count_text("user", t) + count_text("describe", t) + IMAGE_LOW + IMAGE_DEFAULT + 3
        );

        let call = json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}
        ]}]});
        assert_eq!(
            estimate_prompt(Endpoint::ChatCompletions, &call, t),
            3 + count_text("assistant", t) + 3 + count_text("f", t) + count_text("{\"a\":1}", t) + 3
        );

        let plain = json!({"messages": [{"role": "user", "content": "hi"}]});
        let params = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let mut with_tools = plain.clone();
        with_tools["tools"] = json!([{"type": "function", "function": {
            "name": "get_weather", "description": "Weather now", "parameters": params}}]);
        let base = estimate_prompt(Endpoint::ChatCompletions, &plain, t);
        assert_eq!(
            estimate_prompt(Endpoint::ChatCompletions, &with_tools, t),
            base + TOOLS_OVERHEAD
                + TOKENS_PER_TOOL
                + count_text("get_weather", t)
                + count_text("Weather now", t)
                + count_text(&params.to_string(), t)
        );
    }

    #[test]
    fn completions_and_embeddings_take_strings_arrays_and_token_ids() {
        let t = Tokenizer::Cl100kBase;
        let hw = count_text("hello world", t);
        for (endpoint, key) in [(Endpoint::Completions, "prompt"), (Endpoint::Embeddings, "input")] {
            assert_eq!(estimate_prompt(endpoint, &json!({key: "hello world"}), t), hw);
            assert_eq!(
                estimate_prompt(endpoint, &json!({key: ["hello world", "hello world"]}), t),
                2 * hw
            );
            assert_eq!(estimate_prompt(endpoint, &json!({key: [1, 2, 3]}), t), 3);
            assert_eq!(estimate_prompt(endpoint, &json!({key: [[1, 2], [3]]}), t), 3);
            assert_eq!(estimate_prompt(endpoint, &json!({}), t), 0);
        }
    }

    #[test]
    fn malformed_bodies_count_what_they_can() {
        let t = Tokenizer::O200kBase;
        assert_eq!(estimate_prompt(Endpoint::ChatCompletions, &json!({}), t), 0);
        assert_eq!(
            estimate_prompt(Endpoint::ChatCompletions, &json!({"messages": [1]}), t),
            3 + 3
        );
    }

    #[test]
    fn tokenizer_is_built_once() {
        warm_up();
        let a = bpe(Tokenizer::O200kBase).map(|b| b as *const CoreBPE);
        let b = bpe(Tokenizer::O200kBase).map(|b| b as *const CoreBPE);
        assert!(a.is_some());
        assert_eq!(a, b);
    }
}
