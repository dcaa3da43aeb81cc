//! Token estimation for admission: how many prompt tokens a request will
//! cost before the upstream says so, counted with tiktoken.
//!
//! This runs on the hot path (every admitted request), so each BPE is built
//! once per process and shared. Chat messages are counted the way OpenAI's
//! cookbook documents it: 3 tokens of framing per message, 1 more when a
//! message has a `name`, and 3 to prime the reply. Figures for images and
//! tool definitions are estimates (OpenAI does not publish an exact rule);
//! they lean high, since the estimate feeds worst-case reservations.

use crate::chat::{Body, ChatRequest, Content, ContentPart, FunctionCall, Message};
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
pub fn estimate_prompt(endpoint: Endpoint, body: &Body, tokenizer: Tokenizer) -> u64 {
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
pub fn prompt_upper_bound(endpoint: Endpoint, body: &Body, tokenizer: Tokenizer) -> u64 {
    prompt(
        endpoint,
        body,
        Counter {
            tokenizer,
            bound_short: true,
        },
    )
}

fn prompt(endpoint: Endpoint, body: &Body, tok: Counter) -> u64 {
    let body = match body {
        Body::Chat(chat) => return self::chat(chat, tok),
        Body::Json(v) => v,
    };
    let native = |fields: &[&str]| {
        fields
            .iter()
            .filter_map(|k| body.get(*k))
            .map(|v| texts(v, tok))
            .sum::<u64>()
            .saturating_add(REPLY_PRIMING)
    };
    match endpoint {
        Endpoint::Completions => prompt_like(body.get("prompt"), tok),
        Endpoint::Embeddings => prompt_like(body.get("input"), tok),
        // Native bodies: every text of the prompt's fields, with the chat
        // framing per item, and images as chat counts them.
        Endpoint::Responses => native(&["instructions", "input", "tools", "text"]),
        Endpoint::Messages => native(&["system", "messages", "tools"]),
        // Chat comes typed; untyped, its messages are counted as a native
        // prompt's.
        Endpoint::ChatCompletions => native(&["messages", "tools"]),
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

fn chat(body: &ChatRequest, tok: Counter) -> u64 {
    let mut n: u64 = 0;
    if let Some(messages) = &body.messages {
        for m in messages {
            n = n.saturating_add(TOKENS_PER_MESSAGE + message(m, tok));
        }
        n = n.saturating_add(REPLY_PRIMING);
    }
    let definitions = |defs: &mut dyn Iterator<Item = u64>| {
        let mut any = false;
        let sum = defs.fold(TOOLS_OVERHEAD, |sum, d| {
            any = true;
            sum.saturating_add(TOKENS_PER_TOOL + d)
        });
        if any {
            sum
        } else {
            0
        }
    };
    if let Some(tools) = &body.tools {
        n = n.saturating_add(definitions(&mut tools.iter().map(|t| {
            t.function.as_ref().map_or(0, |f| {
                text(f.name.as_deref(), tok)
                    + text(f.description.as_deref(), tok)
                    + f.parameters.as_ref().map_or(0, |p| tok.count(&p.to_string()))
            })
        })));
    }
    // The legacy `functions` parameter.
    if let Some(Value::Array(functions)) = body.extra.get("functions") {
        n = n.saturating_add(definitions(&mut functions.iter().map(|f| tool_definition(f, tok))));
    }
    n
}

fn text(s: Option<&str>, tok: Counter) -> u64 {
    s.map_or(0, |s| tok.count(s))
}

/// A message: its role, content, name, tool calls and every other text
/// field (`tool_call_id`, a legacy `function_call`, …).
fn message(m: &Message, tok: Counter) -> u64 {
    let mut n = tok.count(m.role.as_str()) + content(&m.content, tok);
    if let Some(name) = &m.name {
        n += TOKENS_PER_NAME + tok.count(name);
    }
    for c in m.tool_calls() {
        n += TOKENS_PER_MESSAGE + c.function.as_ref().map_or(0, |f| function_call(f, tok));
    }
    n += text(m.tool_call_id.as_deref(), tok);
    for (key, value) in &m.extra {
        n += match (key.as_str(), value) {
            ("function_call", Value::Object(f)) => {
                let field = |k: &str| text(f.get(k).and_then(Value::as_str), tok);
                field("name") + field("arguments")
            }
            _ => text(value.as_str(), tok),
        };
    }
    n
}

fn content(value: &Content, tok: Counter) -> u64 {
    match value {
        Content::Text(s) => tok.count(s),
        Content::Parts(parts) => parts.iter().map(|p| part(p, tok)).sum(),
        Content::Absent | Content::Null => 0,
    }
}

fn part(p: &ContentPart, tok: Counter) -> u64 {
    match p.kind.as_str() {
        "text" => text(p.text.as_deref(), tok),
        "image_url" if p.image_detail() == Some("low") => IMAGE_LOW,
        "image_url" => IMAGE_DEFAULT,
        // Refusals, audio transcripts and other textual parts: every string.
        kind => {
            tok.count(kind)
                + text(p.text.as_deref(), tok)
                + text(p.image_url.as_ref().and_then(Value::as_str), tok)
                + p.extra.values().map(|v| text(v.as_str(), tok)).sum::<u64>()
        }
    }
}

fn function_call(f: &FunctionCall, tok: Counter) -> u64 {
    text(f.name.as_deref(), tok) + text(f.arguments.as_deref(), tok)
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

    /// Counts over the body of a call to `endpoint`, as the gateway hands it over.
    fn est(endpoint: Endpoint, v: &Value, t: Tokenizer) -> u64 {
        estimate_prompt(endpoint, &Body::from_json(endpoint, v.clone()).unwrap(), t)
    }

    fn bound(endpoint: Endpoint, v: &Value, t: Tokenizer) -> u64 {
        prompt_upper_bound(endpoint, &Body::from_json(endpoint, v.clone()).unwrap(), t)
    }

    #[test]
    fn native_prompts_count_every_text_and_bound_the_exact_count() {
        let t = Tokenizer::O200kBase;
        let long = "word ".repeat(200);
        let responses = json!({"instructions": "Be brief.", "input": [{"role": "user", "content": [{"type": "input_text", "text": long}]}]});
        let exact = est(Endpoint::Responses, &responses, t);
        assert!(exact >= 200, "{exact}");
        assert!(bound(Endpoint::Responses, &responses, t) >= exact);
        let messages = json!({"system": "Be brief.", "messages": [{"role": "user", "content": long}],
                              "tools": [{"name": "f", "input_schema": {"type": "object"}}]});
        let m = est(Endpoint::Messages, &messages, t);
        assert!(m > exact - 10 && m < exact + 40, "{m} vs {exact}");
        let image = json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"data": long}}]}]});
        assert!(est(Endpoint::Messages, &image, t) < 800);
        assert_eq!(est(Endpoint::Messages, &json!({}), t), REPLY_PRIMING);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Counts over the body of a call to `endpoint`, as the gateway hands it over.
    fn est(endpoint: Endpoint, v: &Value, t: Tokenizer) -> u64 {
        estimate_prompt(endpoint, &Body::from_json(endpoint, v.clone()).unwrap(), t)
    }

    fn bound(endpoint: Endpoint, v: &Value, t: Tokenizer) -> u64 {
        prompt_upper_bound(endpoint, &Body::from_json(endpoint, v.clone()).unwrap(), t)
    }

    #[test]
    fn the_upper_bound_never_undercounts_and_tokenizes_long_texts() {
        let long = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        for body in [
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": long}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "日本語のテキスト"}]}]}),
        ] {
            for t in [Tokenizer::Cl100kBase, Tokenizer::O200kBase] {
                let exact = est(Endpoint::ChatCompletions, &body, t);
                let bound = bound(Endpoint::ChatCompletions, &body, t);
                assert!(bound >= exact, "{bound} < {exact} for {body}");
            }
        }
        // A long text is tokenized, not bounded by its length.
        let body = json!({"messages": [{"role": "user", "content": long}]});
        let most = bound(Endpoint::ChatCompletions, &body, Tokenizer::O200kBase);
        assert!(most < long.len() as u64 / 2, "{most}");
        // A short one is bounded by its bytes.
        let short = json!({"input": "abc"});
        assert_eq!(bound(Endpoint::Embeddings, &short, Tokenizer::O200kBase), 3);
        assert_eq!(est(Endpoint::Embeddings, &short, Tokenizer::O200kBase), 1);
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
        assert_eq!(est(Endpoint::ChatCompletions, &body, t), expected);
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
            est(Endpoint::ChatCompletions, &parts, t),
            3 + count_text("user", t) + count_text("describe", t) + IMAGE_LOW + IMAGE_DEFAULT + 3
        );

        let call = json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}
        ]}]});
        assert_eq!(
            est(Endpoint::ChatCompletions, &call, t),
            3 + count_text("assistant", t) + 3 + count_text("f", t) + count_text("{\"a\":1}", t) + 3
        );

        let plain = json!({"messages": [{"role": "user", "content": "hi"}]});
        let params = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let mut with_tools = plain.clone();
        with_tools["tools"] = json!([{"type": "function", "function": {
            "name": "get_weather", "description": "Weather now", "parameters": params}}]);
        let base = est(Endpoint::ChatCompletions, &plain, t);
        assert_eq!(
            est(Endpoint::ChatCompletions, &with_tools, t),
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
            assert_eq!(est(endpoint, &json!({key: "hello world"}), t), hw);
            assert_eq!(est(endpoint, &json!({key: ["hello world", "hello world"]}), t), 2 * hw);
            assert_eq!(est(endpoint, &json!({key: [1, 2, 3]}), t), 3);
            assert_eq!(est(endpoint, &json!({key: [[1, 2], [3]]}), t), 3);
            assert_eq!(est(endpoint, &json!({}), t), 0);
        }
    }

    #[test]
    fn malformed_bodies_count_what_they_can() {
        let t = Tokenizer::O200kBase;
        assert_eq!(est(Endpoint::ChatCompletions, &json!({}), t), 0);
        // Untyped chat (never from the gateway) counts its texts.
        let untyped = Body::Json(json!({"messages": [1, {"content": "hello world"}]}));
        assert_eq!(
            estimate_prompt(Endpoint::ChatCompletions, &untyped, t),
            TOKENS_PER_MESSAGE + count_text("hello world", t) + REPLY_PRIMING
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
