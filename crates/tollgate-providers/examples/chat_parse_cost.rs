//! What reading a chat body costs the hot path: allocations and time of
//! parsing it into the typed `ChatRequest` and serialising it for an
//! OpenAI-compatible upstream, against doing the same through a
//! `serde_json::Value` tree.
//!
//! `cargo run --release -p tollgate-providers --example chat_parse_cost`

use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tollgate_providers::chat::ChatRequest;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is an atomic and allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROUNDS: u32 = 20_000;

/// Allocations per round and microseconds per round of `f`.
fn measure(f: impl Fn() -> usize) -> (f64, f64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut sink = 0;
    for _ in 0..ROUNDS {
        sink += f();
    }
    let took = started.elapsed();
    assert!(sink > 0);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    (
        allocations as f64 / f64::from(ROUNDS),
        took.as_secs_f64() * 1e6 / f64::from(ROUNDS),
    )
}

fn main() {
    let small = json!({"model": "@openai/gpt-4o-mini", "max_tokens": 256, "temperature": 0.7,
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Write a haiku about toll roads."}]});
    let turns: Vec<Value> = (0..20)
        .map(|i| {
            json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
                   "content": format!("turn {i}: {}", "some words of the conversation ".repeat(8))})
        })
        .collect();
    let large = json!({"model": "@openai/gpt-4o", "stream": true, "user": "u-1", "messages": turns,
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "auto", "response_format": {"type": "json_object"}, "logprobs": false});
    // A vision request: a 64 KB image inline, as a data URL.
    let image = format!("data:image/png;base64,{}", "iVBORw0KGgo".repeat(64 * 1024 / 11));
    let vision = json!({"model": "@openai/gpt-4o", "max_tokens": 300, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": image, "detail": "low"}}]}]});
    println!("body    bytes  path   allocations/round  µs/round");
    for (name, body) in [("small", small), ("large", large), ("vision", vision)] {
        let raw = serde_json::to_vec(&body).unwrap_or_default();
        let (a, t) = measure(|| {
            let v: Value = serde_json::from_slice(&raw).unwrap_or_default();
            serde_json::to_vec(&v).map(|b| b.len()).unwrap_or(0)
        });
        println!("{name:6} {:6}  Value  {a:17.1}  {t:8.2}", raw.len());
        let (a, t) = measure(|| {
            let c: ChatRequest = serde_json::from_slice(&raw).unwrap_or_default();
            serde_json::to_vec(&c).map(|b| b.len()).unwrap_or(0)
        });
        println!("{name:6} {:6}  typed  {a:17.1}  {t:8.2}", raw.len());
    }
}
