//! The Gemini API adapter against the Gemini mock, and the recorded Gemini
//! SSE transcript replayed through the parser.

use crate::support::{assert_cut, assert_usage, collect, expect_err, tokens, upstream, weather_tools, whole, Fixture};
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_providers::google::Gemini;
use tollgate_providers::{Endpoint, ProviderError};
use tollgate_testkit::control::Control;
use tollgate_testkit::google as mock;
use tollgate_testkit::MockServer;

const KEY: &str = "AIzaSy-test-key-0123456789";
const MODEL: &str = "gemini-1.5-flash";

async fn start() -> (MockServer, Control, Fixture) {
    let control = Control::new();
    let server = mock::start_gemini(KEY, control.clone()).await.unwrap();
    let fx = Fixture::new(Some(format!("{}/v1beta", server.url())), Some(KEY), MODEL);
    (server, control, fx)
}

#[tokio::test]
async fn chat_is_translated_both_ways_with_the_key_in_a_header() {
    let (server, control, fx) = start().await;
    control.set_usage(20, 9, 4);
    control.set_reply("Bonjour!");
    let body = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Salut"},
            {"role": "user", "content": [{"type": "text", "text": "And this?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}]}
        ],
        "max_tokens": 64, "temperature": 0.3, "top_p": 0.8, "stop": ["\n\n"]
    });
    let (out, usage) = whole(fx.send(&Gemini, Endpoint::ChatCompletions, &body, false, false).await);

    let req = server.journal.last().unwrap();
    assert_eq!(req.path, "/v1beta/models/gemini-1.5-flash:generateContent");
    assert_eq!(req.query, None, "the key must not travel in the URL");
    assert_eq!(req.header("x-goog-api-key"), Some(KEY));
    let sent = req.json();
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "Answer in French."}]})
    );
    assert_eq!(
        sent["contents"][0],
        json!({"role": "user", "parts": [{"text": "Hello"}]})
    );
    assert_eq!(
        sent["contents"][1],
        json!({"role": "model", "parts": [{"text": "Salut"}]})
    );
    assert_eq!(
        sent["contents"][2]["parts"][1],
        json!({"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}})
    );
    assert_eq!(
        sent["generationConfig"],
        json!({"maxOutputTokens": 64, "temperature": 0.3, "topP": 0.8, "stopSequences": ["\n\n"]})
    );

    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["model"], MODEL);
    assert_eq!(
        out["choices"][0]["message"],
        json!({"role": "assistant", "content": "Bonjour!"})
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(out["usage"]["total_tokens"], 29);
    assert_usage(&out, usage, tokens(20, 9, 4));
}

#[tokio::test]
async fn stream_is_translated_to_openai_chunks_with_usage() {
    let (server, control, fx) = start().await;
    control.set_usage(11, 5, 0);
    control.set_reply("one two three four");
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "count"}], "stream": true});

    let got = collect(fx.send(&Gemini, Endpoint::ChatCompletions, &body, true, true).await).await;
    let req = server.journal.last().unwrap();
    assert_eq!(req.path, "/v1beta/models/gemini-1.5-flash:streamGenerateContent");
    assert_eq!(req.query.as_deref(), Some("alt=sse"));
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(got.frames[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(got.text("/choices/0/delta/content"), "one two three four");
    assert!(got.frames.iter().all(|f| f["object"] == "chat.completion.chunk"));
    let ids: std::collections::HashSet<_> = got.frames.iter().map(|f| f["id"].clone()).collect();
    assert_eq!(ids.len(), 1, "one id for the whole stream");
    let finish = got.strs("/choices/0/finish_reason");
    assert_eq!(finish, ["stop"]);
    let last = got.frames.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["total_tokens"], 16);
    assert_eq!(got.usage, [tokens(11, 5, 0)]);

    // Without include_usage the usage still reaches accounting, not the client.
    let got = collect(fx.send(&Gemini, Endpoint::ChatCompletions, &body, true, false).await).await;
    assert!(got.frames.iter().all(|f| f.get("usage").is_none()));
    assert_eq!(got.usage.len(), 1);
}

#[tokio::test]
async fn tool_calls_go_both_ways() {
    let (server, _control, fx) = start().await;
    let ask = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": weather_tools(),
        "tool_choice": "required"
    });
    let (out, _) = whole(fx.send(&Gemini, Endpoint::ChatCompletions, &ask, false, false).await);
    let sent = server.journal.last().unwrap().json();
    let decl = &sent["tools"][0]["functionDeclarations"][0];
    assert_eq!(decl["name"], "get_weather");
    assert_eq!(decl["parameters"]["properties"]["city"]["type"], "string");
    assert_eq!(sent["toolConfig"], json!({"functionCallingConfig": {"mode": "ANY"}}));

    let choice = &out["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    let id = call["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "mock"}));

    // The answer goes back as a functionResponse named after the call.
    let answer = json!({
        "model": MODEL,
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            choice["message"].clone(),
            {"role": "tool", "tool_call_id": id, "content": "{\"temp_c\": 21}"}
        ],
        "tools": weather_tools()
    });
    let (out, _) = whole(fx.send(&Gemini, Endpoint::ChatCompletions, &answer, false, false).await);
    let sent = server.journal.last().unwrap().json();
    assert_eq!(
        sent["contents"][1],
        json!({"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "mock"}}}]})
    );
    assert_eq!(
        sent["contents"][2],
        json!({"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}]})
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert!(out["choices"][0]["message"]["content"].is_string());

    // Streamed, the call arrives as one tool_calls delta.
    let got = collect(fx.send(&Gemini, Endpoint::ChatCompletions, &ask, true, false).await).await;
    let call = got.first("/choices/0/delta/tool_calls/0");
    assert_eq!(call["index"], 0);
    assert_eq!(call["function"]["name"], "get_weather");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(
        got.frames
            .iter()
            .rev()
            .find_map(|f| f.pointer("/choices/0/finish_reason")),
        Some(&json!("tool_calls"))
    );
}

#[tokio::test]
async fn completions_answer_text_completion() {
    let (server, control, fx) = start().await;
    control.set_reply("blue sky");
    let body = json!({"model": MODEL, "prompt": "The sky is", "max_tokens": 5});
    let (out, usage) = whole(fx.send(&Gemini, Endpoint::Completions, &body, false, false).await);
    let sent = server.journal.last().unwrap().json();
    assert_eq!(
        sent["contents"],
        json!([{"role": "user", "parts": [{"text": "The sky is"}]}])
    );
    assert_eq!(out["object"], "text_completion");
    assert_eq!(out["choices"][0]["text"], "blue sky");
    assert!(usage.is_some());

    let got = collect(fx.send(&Gemini, Endpoint::Completions, &body, true, false).await).await;
    assert!(got.frames.iter().all(|f| f["object"] == "text_completion"));
    assert_eq!(got.text("/choices/0/text"), "blue sky");
}

#[tokio::test]
async fn embeddings_use_batch_embed_contents_and_estimate_usage() {
    let (server, _control, fx) = start().await;
    let fx = Fixture {
        model: "text-embedding-004".into(),
        ..fx
    };
    let body = json!({"model": "text-embedding-004", "input": ["hello world", "bye"]});
    let (out, usage) = whole(fx.send(&Gemini, Endpoint::Embeddings, &body, false, false).await);
    let req = server.journal.last().unwrap();
    assert_eq!(req.path, "/v1beta/models/text-embedding-004:batchEmbedContents");
    let sent = req.json();
    assert_eq!(sent["requests"][1]["model"], "models/text-embedding-004");
    assert_eq!(sent["requests"][1]["content"], json!({"parts": [{"text": "bye"}]}));
    assert_eq!(out["object"], "list");
    assert_eq!(out["data"].as_array().unwrap().len(), 2);
    assert_eq!(out["data"][1]["index"], 1);
    assert_eq!(out["data"][0]["embedding"].as_array().unwrap().len(), 4);
    let tokens = usage.unwrap().prompt_tokens;
    assert!(tokens >= 3, "estimated with tiktoken: {tokens}");
    assert_eq!(out["usage"]["prompt_tokens"], tokens);

    // A single string, with dimensions and base64 encoding.
    let body = json!({"model": "m", "input": "hi", "dimensions": 8, "encoding_format": "base64"});
    let (out, _) = whole(fx.send(&Gemini, Endpoint::Embeddings, &body, false, false).await);
    assert_eq!(
        server.journal.last().unwrap().json()["requests"][0]["outputDimensionality"],
        8
    );
    assert_eq!(
        out["data"][0]["embedding"].as_str().unwrap().len(),
        44,
        "8 f32 in base64"
    );
}

#[tokio::test]
async fn upstream_errors_keep_googles_message() {
    let (_server, control, fx) = start().await;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]});
    let wrong = Fixture::new(fx.base_url.clone(), Some("wrong"), MODEL);
    let (status, message) = upstream(
        wrong
            .send(&Gemini, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert_eq!(status, 400);
    assert!(message.contains("API key not valid"), "{message}");

    control.fail(429, "Resource has been exhausted (e.g. check quota).");
    let (status, message) = upstream(fx.send(&Gemini, Endpoint::ChatCompletions, &body, true, false).await);
    assert_eq!(
        (status, message.as_str()),
        (429, "Resource has been exhausted (e.g. check quota).")
    );
    control.fail(503, "The model is overloaded.");
    let (status, message) = upstream(fx.send(&Gemini, Endpoint::ChatCompletions, &body, false, false).await);
    assert_eq!((status, message.as_str()), (503, "The model is overloaded."));
    let embed = json!({"input": "x"});
    let (status, _) = upstream(fx.send(&Gemini, Endpoint::Embeddings, &embed, false, false).await);
    assert_eq!(status, 503);
}

#[tokio::test]
async fn missing_key_bad_request_timeout_and_unreachable() {
    let (_server, control, fx) = start().await;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]});
    let nokey = Fixture::new(fx.base_url.clone(), None, MODEL);
    let e = expect_err(
        nokey
            .send(&Gemini, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");

    let bad = json!({"model": MODEL, "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]});
    let e = expect_err(fx.send(&Gemini, Endpoint::ChatCompletions, &bad, false, false).await);
    assert!(
        matches!(e, ProviderError::Unsupported(ref m) if m.contains("nope")),
        "{e:?}"
    );

    control.set_latency(Duration::from_secs(5));
    let slow = Fixture {
        timeout: Duration::from_millis(200),
        ..Fixture::new(fx.base_url.clone(), Some(KEY), MODEL)
    };
    let e = expect_err(slow.send(&Gemini, Endpoint::ChatCompletions, &body, false, false).await);
    assert!(matches!(e, ProviderError::Timeout), "{e:?}");

    let dead = Fixture::new(Some(crate::support::dead_url().await), Some(KEY), MODEL);
    let e = expect_err(dead.send(&Gemini, Endpoint::ChatCompletions, &body, false, false).await);
    assert!(
        matches!(e, ProviderError::Unreachable(ref m) if !m.contains(KEY)),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_cut_stream_ends_with_an_error_after_the_frames_received() {
    let (_server, control, fx) = start().await;
    control.set_reply("a b c d e f g h");
    control.cut_stream(true);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]});
    let got = collect(fx.send(&Gemini, Endpoint::ChatCompletions, &body, true, true).await).await;
    assert_eq!(got.text("/choices/0/delta/content"), "a b c d ");
    assert_cut(&got);
}

#[tokio::test]
async fn recorded_gemini_stream_replays_through_the_parser() {
    let transcript = include_bytes!("../fixtures/gemini_stream_sse.txt").to_vec();
    for chunk in [1, 5, 64, transcript.len()] {
        let server = tollgate_testkit::control::start_replay(transcript.clone(), "text/event-stream", chunk)
            .await
            .unwrap();
        let fx = Fixture::new(Some(server.url()), Some(KEY), "gemini-1.5-flash");
        let body = json!({"messages": [{"role": "user", "content": "Write a story about a magic backpack."}]});
        let got = collect(fx.send(&Gemini, Endpoint::ChatCompletions, &body, true, true).await).await;
        assert!(got.error.is_none(), "{:?}", got.error);
        assert_eq!(
            got.text("/choices/0/delta/content"),
            "Once upon a time, a curious girl named Lily found a backpack that hummed with magic."
        );
        assert_eq!(got.usage, [tokens(8, 19, 2)]);
    }
}

#[tokio::test]
async fn hostile_model_names_stay_one_encoded_path_segment() {
    use crate::support::{assert_confined, DOT_MODELS, HOSTILE_MODELS};
    let (server, _control, mut fx) = start().await;
    let body = json!({"model": "x", "messages": [{"role": "user", "content": "Hi"}]});
    for model in HOSTILE_MODELS {
        server.journal.clear();
        fx.model = (*model).to_owned();
        let _ = fx.send(&Gemini, Endpoint::ChatCompletions, &body, false, false).await;
        let _ = fx
            .send(&Gemini, Endpoint::Embeddings, &json!({"input": "a"}), false, false)
            .await;
        let requests = server.journal.requests();
        assert_confined(&requests, "/v1beta/models/", None);
        for r in &requests {
            let segment = r.path.trim_start_matches("/v1beta/models/");
            assert!(!segment.contains('/'), "{} split the model name", r.path);
        }
    }
    server.journal.clear();
    fx.model = "../../v1beta/cachedContents?x=".into();
    let _ = fx.send(&Gemini, Endpoint::ChatCompletions, &body, false, false).await;
    assert_eq!(
        server.journal.last().unwrap().path,
        "/v1beta/models/..%2F..%2Fv1beta%2FcachedContents%3Fx%3D:generateContent"
    );
    for model in DOT_MODELS.iter().chain(&["models/..", "models/."]) {
        server.journal.clear();
        fx.model = (*model).to_owned();
        let e = expect_err(fx.send(&Gemini, Endpoint::ChatCompletions, &body, false, false).await);
        assert!(matches!(e, ProviderError::Unsupported(_)), "{model}: {e:?}");
        assert_eq!(server.journal.calls(), 0, "{model} must not be sent");
    }
}
