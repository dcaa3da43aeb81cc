//! Converse translation: OpenAI chat and completions requests → Converse
//! bodies, and whole Converse answers → OpenAI bodies (written by the
//! shared `openai_shape` builders).

use crate::chat::{Body, ChatRequest, Message, Role};
use crate::openai_shape::{self, bad_request, Choice, Part, Sampling, ToolCall};
use crate::{Endpoint, ProviderError};
use serde_json::{json, Map, Value};
use tollgate_core::token_usage::Usage;

/// Translates a chat or completions request into a Converse body.
pub(super) fn converse_body(endpoint: Endpoint, body: &Body) -> Result<Value, ProviderError> {
    let mut out = Map::new();
    match endpoint {
        Endpoint::ChatCompletions => {
            let chat = openai_shape::chat_request(body)?;
            let (system, turns, used_tools) = translate_messages(chat.messages())?;
            if !system.is_empty() {
                out.insert("system".into(), Value::Array(system));
            }
            out.insert("messages".into(), Value::Array(turns));
            if let Some(tc) = tool_config(chat, used_tools)? {
                out.insert("toolConfig".into(), tc);
            }
        }
        Endpoint::Completions => {
            let prompt = openai_shape::completion_prompt(body)?;
            out.insert(
                "messages".into(),
                json!([{ "role": "user", "content": [{ "text": prompt }] }]),
            );
        }
        Endpoint::Embeddings => return Err(bad_request("embeddings do not use Converse")),
        Endpoint::Responses | Endpoint::Messages => return Err(crate::not_native(endpoint)),
    }
    let sampling = Sampling::of(body);
    let mut inference = Map::new();
    if let Some(n) = sampling.max_tokens {
        inference.insert("maxTokens".into(), json!(n));
    }
    for (to, v) in [("temperature", sampling.temperature), ("topP", sampling.top_p)] {
        if let Some(v) = v {
            inference.insert(to.into(), Value::Number(v.clone()));
        }
    }
    if let Some(stop) = sampling.stop {
        inference.insert("stopSequences".into(), json!(stop));
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    Ok(Value::Object(out))
}

/// OpenAI messages → Converse `system` blocks and `messages` (user and
/// assistant turns strictly alternating: consecutive same-role messages
/// merge; tool results are `toolResult` blocks of a user turn). Also says
/// whether the history holds tool blocks (Bedrock then requires
/// `toolConfig`).
fn translate_messages(messages: &[Message]) -> Result<(Vec<Value>, Vec<Value>, bool), ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    let mut used_tools = false;
    for m in messages {
        match &m.role {
            Role::System | Role::Developer => {
                let text = openai_shape::text_of(&m.content);
                if !text.is_empty() {
                    system.push(json!({ "text": text }));
                }
            }
            Role::User => {
                let mut blocks = Vec::new();
                for part in openai_shape::parts_of(&m.content)? {
                    match part {
                        Part::Text("") => {}
                        Part::Text(t) => blocks.push(json!({ "text": t })),
                        Part::InlineImage { mime, data } => {
                            let format = match mime.strip_prefix("image/") {
                                Some("jpg") | Some("jpeg") => "jpeg",
                                Some(f @ ("png" | "gif" | "webp")) => f,
                                _ => return Err(bad_request(format!("Bedrock cannot take images of type {mime}"))),
                            };
                            blocks.push(json!({ "image": { "format": format, "source": { "bytes": data } } }));
                        }
                        Part::ImageUrl(_) => {
                            return Err(bad_request("Bedrock needs images inline, as data: URLs"));
                        }
                    }
                }
                openai_shape::push_turn(&mut turns, "user", "content", blocks);
            }
            Role::Assistant => {
                let mut blocks = Vec::new();
                let text = openai_shape::text_of(&m.content);
                if !text.is_empty() {
                    blocks.push(json!({ "text": text }));
                }
                for call in openai_shape::history_tool_calls(m, true)? {
                    let input = if call.arguments.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str::<Value>(call.arguments)
                            .map_err(|_| bad_request("tool call arguments must be JSON"))?
                    };
                    let (id, name) = (call.id, call.name);
                    blocks.push(json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } }));
                    used_tools = true;
                }
                openai_shape::push_turn(&mut turns, "assistant", "content", blocks);
            }
            Role::Tool => {
                let id = m
                    .tool_call_id
                    .as_deref()
                    .ok_or_else(|| bad_request("tool message without tool_call_id"))?;
                let text = openai_shape::text_of(&m.content);
                openai_shape::push_turn(
                    &mut turns,
                    "user",
                    "content",
                    vec![json!({ "toolResult": { "toolUseId": id, "content": [{ "text": text }] } })],
                );
                used_tools = true;
            }
            other => return Err(bad_request(format!("unknown message role {}", other.as_str()))),
        }
    }
    Ok((system, turns, used_tools))
}

/// OpenAI `tools`/`tool_choice` → `toolConfig`. Converse has no "none":
/// the tools are then left out, unless the history holds tool blocks (which
/// Bedrock refuses without a `toolConfig`), in which case the model chooses.
fn tool_config(body: &ChatRequest, used_tools: bool) -> Result<Option<Value>, ProviderError> {
    let tools: Vec<Value> = body
        .tools
        .iter()
        .flatten()
        .filter_map(|t| t.function())
        .map(|f| {
            let mut spec = Map::new();
            spec.insert("name".into(), json!(f.name));
            if let Some(d) = &f.description {
                spec.insert("description".into(), json!(d));
            }
            let schema = f
                .parameters
                .clone()
                .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
            spec.insert("inputSchema".into(), json!({ "json": schema }));
            json!({ "toolSpec": spec })
        })
        .collect();
    if tools.is_empty() {
        return Ok(None);
    }
    let choice = match &body.tool_choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({ "auto": {} })),
            "required" => Some(json!({ "any": {} })),
            "none" if !used_tools => return Ok(None),
            "none" => None,
            other => return Err(bad_request(format!("unknown tool_choice {other}"))),
        },
        Some(v) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request("tool_choice must name a function"))?;
            Some(json!({ "tool": { "name": name } }))
        }
    };
    let mut config = json!({ "tools": tools });
    if let Some(c) = choice {
        config["toolChoice"] = c;
    }
    Ok(Some(config))
}

/// Converse `usage` → usage. Bedrock's `inputTokens` leaves out cache reads
/// and writes; OpenAI's `prompt_tokens` includes them, with cache reads as
/// `cached_tokens`.
pub(super) fn usage_from(u: &Value) -> Option<Usage> {
    u.as_object()?;
    let get = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = get("cacheReadInputTokens");
    Some(Usage {
        prompt_tokens: get("inputTokens")
            .saturating_add(cached)
            .saturating_add(get("cacheWriteInputTokens")),
        completion_tokens: get("outputTokens"),
        cached_tokens: cached,
    })
}

/// Converse `stopReason` → OpenAI `finish_reason`.
pub(super) fn map_stop(reason: &str, has_calls: bool) -> &'static str {
    match reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "content_filtered" | "guardrail_intervened" => "content_filter",
        _ if has_calls => "tool_calls",
        _ => "stop",
    }
}

/// A whole Converse answer → OpenAI body and usage.
pub(super) fn converse_response(
    endpoint: Endpoint,
    model: &str,
    v: &Value,
) -> Result<(Value, Option<Usage>), ProviderError> {
    let content = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::InvalidResponse("answer has no output.message".into()))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in content {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(tu) = block.get("toolUse") {
            tool_calls.push(ToolCall {
                id: tu
                    .get("toolUseId")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| openai_shape::new_id("call_")),
                name: tu.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                arguments: tu.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
            });
        }
    }
    let reason = v.get("stopReason").and_then(Value::as_str).unwrap_or("end_turn");
    let usage = v.get("usage").and_then(usage_from);
    let choice = Choice {
        index: 0,
        finish_reason: Some(map_stop(reason, !tool_calls.is_empty())),
        text,
        tool_calls,
    };
    Ok((
        openai_shape::whole_body(endpoint, model, vec![choice], usage.as_ref()),
        usage,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Translates `body` as the adapter gets it.
    fn converse_body(endpoint: Endpoint, body: &Value) -> Result<Value, ProviderError> {
        super::converse_body(endpoint, &Body::from_json(endpoint, body.clone()).unwrap())
    }

    #[test]
    fn messages_translate_to_converse() {
        let body = json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "see"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/"}}]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "42"},
                {"role": "user", "content": "and?"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "none",
            "max_completion_tokens": 20, "temperature": 0, "stop": ["x"]
        });
        let c = converse_body(Endpoint::ChatCompletions, &body).unwrap();
        assert_eq!(c["system"], json!([{"text": "be brief"}]));
        let turns = c["messages"].as_array().unwrap();
        assert_eq!(turns.len(), 3);
        assert_eq!(turns[0]["content"][1]["image"]["format"], "jpeg");
        assert_eq!(turns[1]["content"][0]["toolUse"]["input"], json!({"a": 1}));
        assert_eq!(turns[2]["content"][0]["toolResult"]["toolUseId"], "t1");
        assert_eq!(turns[2]["content"][1]["text"], "and?");
        // "none" with tool history keeps the tools, without a choice.
        assert!(c["toolConfig"].get("toolChoice").is_none());
        assert_eq!(
            c["inferenceConfig"],
            json!({"maxTokens": 20, "temperature": 0, "stopSequences": ["x"]})
        );
    }

    #[test]
    fn tool_choices_and_bad_requests() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        for (choice, expected) in [
            (json!("auto"), json!({"auto": {}})),
            (json!("required"), json!({"any": {}})),
            (
                json!({"type": "function", "function": {"name": "f"}}),
                json!({"tool": {"name": "f"}}),
            ),
        ] {
            let c = converse_body(
                Endpoint::ChatCompletions,
                &json!({"messages": [], "tools": tools, "tool_choice": choice}),
            )
            .unwrap();
            assert_eq!(c["toolConfig"]["toolChoice"], expected);
        }
        let none = converse_body(
            Endpoint::ChatCompletions,
            &json!({"messages": [], "tools": tools, "tool_choice": "none"}),
        )
        .unwrap();
        assert!(none.get("toolConfig").is_none());
        let url_image = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]});
        assert!(converse_body(Endpoint::ChatCompletions, &url_image).is_err());
        let tiff = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AA"}}]}]});
        assert!(converse_body(Endpoint::ChatCompletions, &tiff).is_err());
        assert!(converse_body(Endpoint::ChatCompletions, &json!({"messages": [{"role": "x"}]})).is_err());
        assert!(converse_body(
            Endpoint::ChatCompletions,
            &json!({"messages": [], "tools": tools, "tool_choice": "maybe"})
        )
        .is_err());
    }

    #[test]
    fn stop_reasons_map() {
        assert_eq!(map_stop("end_turn", false), "stop");
        assert_eq!(map_stop("stop_sequence", false), "stop");
        assert_eq!(map_stop("max_tokens", false), "length");
        assert_eq!(map_stop("tool_use", true), "tool_calls");
        assert_eq!(map_stop("guardrail_intervened", false), "content_filter");
        assert_eq!(map_stop("content_filtered", false), "content_filter");
    }
}
