//! The fake AI provider as a program, for trying Fleetgate's AI features by
//! hand without a vendor account: `cargo run -p fleetgate-test-support
//! --example fake-llm -- [ADDR] [KEY]` listens on ADDR (default
//! 127.0.0.1:8090; port 0 picks one) and accepts only KEY when given. It
//! echoes the last user message in OpenAI's, Anthropic's and Gemini's formats
//! until Ctrl-C.

use fleetgate_test_support::fake_llm::FakeLlm;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8090".into());
    let key = args.next();
    let fake = match FakeLlm::start_on(&addr, key.as_deref()).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fake-llm: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "fake-llm: OpenAI-compatible base URL {} (Anthropic and Gemini: {}){}",
        fake.openai_url(),
        fake.url(),
        if key.is_some() { ", key required" } else { "" }
    );
    let _ = tokio::signal::ctrl_c().await;
}
