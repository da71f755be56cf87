//! The provider client against the local fake provider: every format, whole and
//! streamed, and what goes wrong (refused keys, malformed answers, cut streams,
//! silence). Nothing here reaches the internet.

use std::time::{Duration, Instant};

use fleetgate_ai::{
    AiError, ChatRequest, Completion, FinishReason, ProviderClient, ProviderConfig, ProviderKind,
    StreamEvent, Usage,
};
use fleetgate_test_support::fake_llm::{FakeFinish, FakeLlm, FakeUsage, Reply};

const KEY: &str = "sk-test-0123456789abcdef";

fn client(fake: &FakeLlm, kind: ProviderKind, key: Option<&str>) -> ProviderClient {
    let base = if kind.speaks_openai() {
        fake.openai_url()
    } else {
        fake.url()
    };
    ProviderClient::new(
        fleetgate_ai::http_client().expect("http client"),
        ProviderConfig {
            kind,
            base_url: Some(base),
            api_key: key.map(str::to_string),
            timeout: Duration::from_secs(5),
        },
    )
    .expect("client")
}

const KINDS: [ProviderKind; 4] = [
    ProviderKind::OpenAi,
    ProviderKind::Anthropic,
    ProviderKind::Gemini,
    ProviderKind::OpenAiCompatible,
];

fn usage() -> FakeUsage {
    FakeUsage {
        input: 120,
        output: 45,
        cached: 100,
        cache_write: 0,
        reasoning: 30,
    }
}

/// What each format can report of [`usage`]: Anthropic does not tell reasoning.
fn expected_usage(kind: ProviderKind) -> Usage {
    Usage {
        input_tokens: 120,
        output_tokens: 45,
        cached_input_tokens: 100,
        cache_write_input_tokens: 0,
        reasoning_tokens: if kind == ProviderKind::Anthropic {
            0
        } else {
            30
        },
    }
}

fn request() -> ChatRequest {
    ChatRequest::new("fake-model-1", "Why is the upstream down?")
        .system("You are an operator's assistant.")
        .max_tokens(200)
        .temperature(0.2)
}

#[tokio::test]
async fn whole_answers_in_every_format() {
    let fake = FakeLlm::start(Some(KEY)).await;
    for kind in KINDS {
        fake.push(
            Reply::text("The pool has no healthy target.")
                .usage(usage())
                .finish(FakeFinish::Length)
                .model("fake-model-1-2025"),
        );
        let c = client(&fake, kind, Some(KEY))
            .complete(&request())
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(
            c,
            Completion {
                text: "The pool has no healthy target.".into(),
                model: "fake-model-1-2025".into(),
                finish_reason: FinishReason::Length,
                usage: expected_usage(kind),
                response_id: c.response_id.clone(),
                tool_calls: Vec::new(),
            },
            "{kind}"
        );
    }
    // Each request was in its provider's format, with the key in its place.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(reqs[0].headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(reqs[0].body["messages"][0]["role"], "system");
    assert_eq!(reqs[0].body["max_completion_tokens"], 200);
    assert_eq!(reqs[1].path, "/v1/messages");
    assert_eq!(reqs[1].headers["x-api-key"], KEY);
    assert_eq!(reqs[1].headers["anthropic-version"], "2023-06-01");
    assert_eq!(reqs[1].body["system"], "You are an operator's assistant.");
    assert_eq!(reqs[2].path, "/v1beta/models/fake-model-1:generateContent");
    assert_eq!(reqs[2].headers["x-goog-api-key"], KEY);
    assert!(reqs[2].query.is_none(), "the key is never in the URL");
    assert_eq!(reqs[3].body["max_tokens"], 200);
}

/// Reads a stream to its end: the text pieces, and the final completion.
async fn read_stream(client: &ProviderClient, req: &ChatRequest) -> (Vec<String>, Completion) {
    let mut s = client.stream(req).await.expect("stream starts");
    let mut pieces = Vec::new();
    let mut done = None;
    while let Some(ev) = s.next().await {
        match ev.expect("event") {
            StreamEvent::Text(t) => pieces.push(t),
            StreamEvent::Done(c) => {
                assert!(done.is_none(), "one Done");
                done = Some(c);
            }
        }
    }
    (pieces, done.expect("a Done event"))
}

#[tokio::test]
async fn streamed_answers_in_every_format() {
    let fake = FakeLlm::start(Some(KEY)).await;
    for kind in KINDS {
        fake.push(
            Reply::text("Restart the exporter, then watch p99.")
                .usage(usage())
                .pieces(4),
        );
        let (pieces, c) = read_stream(&client(&fake, kind, Some(KEY)), &request()).await;
        assert_eq!(pieces.len(), 4, "{kind}: {pieces:?}");
        assert_eq!(pieces.concat(), "Restart the exporter, then watch p99.");
        assert_eq!(c.text, pieces.concat());
        assert_eq!(c.finish_reason, FinishReason::Stop, "{kind}");
        assert_eq!(c.usage, expected_usage(kind), "{kind}");
        assert_eq!(c.model, "fake-model-1");
    }
    let reqs = fake.requests();
    assert_eq!(reqs[0].body["stream"], true);
    assert_eq!(reqs[0].body["stream_options"]["include_usage"], true);
    assert_eq!(reqs[1].body["stream"], true);
    assert_eq!(
        reqs[2].path,
        "/v1beta/models/fake-model-1:streamGenerateContent"
    );
    assert_eq!(reqs[2].query.as_deref(), Some("alt=sse"));
}

#[tokio::test]
async fn text_arrives_before_the_stream_ends() {
    let fake = FakeLlm::start(Some(KEY)).await;
    for kind in KINDS {
        fake.push(
            Reply::text("one two three")
                .pieces(3)
                .chunk_delay(Duration::from_millis(100)),
        );
        let c = client(&fake, kind, Some(KEY));
        let started = Instant::now();
        let mut s = c.stream(&request()).await.expect("stream");
        let first = s.next().await.expect("event").expect("ok");
        assert!(matches!(first, StreamEvent::Text(_)), "{kind}: {first:?}");
        // The whole stream takes several chunk delays; the first text comes
        // well before that.
        let at_first = started.elapsed();
        let rest = s.collect().await.expect("rest");
        assert!(rest.text.ends_with("three"));
        assert!(
            started.elapsed() > at_first + Duration::from_millis(150),
            "{kind}: the text was not streamed ({at_first:?} then {:?})",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_refused_key_is_an_auth_error_and_never_echoed() {
    let fake = FakeLlm::start(Some(KEY)).await;
    let wrong = "sk-wrong-key-99999999999999";
    for kind in KINDS {
        let c = client(&fake, kind, Some(wrong));
        for result in [
            c.complete(&request()).await.map(|_| ()),
            c.list_models().await.map(|_| ()),
            c.stream(&request()).await.map(|_| ()),
        ] {
            let e = result.expect_err("refused");
            if kind != ProviderKind::Gemini {
                assert!(e.is_auth(), "{kind}: {e}");
            }
            let text = format!("{e} {e:?}");
            assert!(!text.contains(wrong), "{kind}: the key leaked: {text}");
        }
    }
    assert!(!format!("{:?}", client(&fake, ProviderKind::OpenAi, Some(KEY))).contains(KEY));
}

#[tokio::test]
async fn provider_errors_and_malformed_answers() {
    let fake = FakeLlm::start(None).await;
    for kind in KINDS {
        let c = client(&fake, kind, Some(KEY));
        fake.push(Reply::error(529, "overloaded, try later"));
        match c.complete(&request()).await {
            Err(AiError::Provider {
                status: Some(529),
                message,
            }) => assert_eq!(message, "overloaded, try later"),
            other => panic!("{kind}: {other:?}"),
        }
        fake.push(Reply::raw(200, "application/json", "{\"choices\": [ {oops"));
        assert!(
            matches!(c.complete(&request()).await, Err(AiError::Malformed(_))),
            "{kind}"
        );
        fake.push(Reply::raw(
            200,
            "application/json",
            "{\"unexpected\": true}",
        ));
        assert!(
            matches!(c.complete(&request()).await, Err(AiError::Malformed(_))),
            "{kind}"
        );
        fake.push(Reply::raw(502, "text/html", "<html>Bad Gateway</html>"));
        match c.complete(&request()).await {
            Err(AiError::Provider {
                status: Some(502),
                message,
            }) => assert!(message.contains("Bad Gateway")),
            other => panic!("{kind}: {other:?}"),
        }
        // Malformed events inside a stream.
        fake.push(Reply::raw(200, "text/event-stream", "data: {not json\n\n"));
        let mut s = c.stream(&request()).await.expect("stream starts");
        assert!(
            matches!(s.next().await, Some(Err(AiError::Malformed(_)))),
            "{kind}"
        );
        assert!(s.next().await.is_none(), "nothing after an error");
        // An error sent as an event of the stream.
        fake.push(Reply::raw(
            200,
            "text/event-stream",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        ));
        let s = c.stream(&request()).await.expect("stream starts");
        assert_eq!(
            s.collect().await,
            Err(AiError::Provider {
                status: None,
                message: "Overloaded".into()
            }),
            "{kind}"
        );
    }
    assert_eq!(fake.pending(), 0);
}

#[tokio::test]
async fn cut_and_broken_streams_keep_what_arrived() {
    let fake = FakeLlm::start(None).await;
    for kind in KINDS {
        let c = client(&fake, kind, Some(KEY));
        // Anthropic's first events carry no text: cut after its first delta.
        let keep = if kind == ProviderKind::Anthropic {
            4
        } else {
            2
        };
        fake.push(
            Reply::text("alpha beta gamma delta")
                .usage(usage())
                .pieces(4)
                .cut_after(keep),
        );
        let mut s = c.stream(&request()).await.expect("stream");
        let mut text = String::new();
        let err = loop {
            match s.next().await {
                Some(Ok(StreamEvent::Text(t))) => text.push_str(&t),
                Some(Ok(StreamEvent::Done(c))) => panic!("{kind}: done without its end: {c:?}"),
                Some(Err(e)) => break e,
                None => panic!("{kind}: ended without an error"),
            }
        };
        assert_eq!(err, AiError::Truncated, "{kind}");
        assert!(
            !text.is_empty() && "alpha beta gamma delta".starts_with(&text),
            "{kind}: {text:?}"
        );
        assert_eq!(s.partial().text, text);
        if kind == ProviderKind::Anthropic {
            // The prompt was counted at the start.
            assert_eq!(s.partial().usage.input_tokens, 120);
        }

        fake.push(
            Reply::text("alpha beta gamma delta")
                .pieces(4)
                .abort_after(keep),
        );
        let s = c
            .stream(&request())
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e:?}"));
        let e = s.collect().await.expect_err("broken");
        assert!(
            matches!(e, AiError::Transport(_) | AiError::Truncated),
            "{kind}: {e:?}"
        );
    }
}

#[tokio::test]
async fn silence_times_out() {
    let fake = FakeLlm::start(None).await;
    let mut c = client(&fake, ProviderKind::OpenAi, Some(KEY));
    c = ProviderClient::new(
        fleetgate_ai::http_client().expect("http"),
        ProviderConfig {
            kind: c.kind(),
            base_url: Some(c.base_url().to_string()),
            api_key: Some(KEY.into()),
            timeout: Duration::from_millis(300),
        },
    )
    .expect("client");
    fake.push(Reply::text("late").delay(Duration::from_secs(2)));
    let started = Instant::now();
    assert_eq!(
        c.complete(&request()).await,
        Err(AiError::Timeout(Duration::from_millis(300)))
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // A stream that stalls between chunks.
    fake.push(
        Reply::text("a b c")
            .pieces(3)
            .chunk_delay(Duration::from_secs(2)),
    );
    let s = c.stream(&request()).await.expect("stream starts");
    assert_eq!(
        s.collect().await,
        Err(AiError::Timeout(Duration::from_millis(300)))
    );
}

#[tokio::test]
async fn model_lists_and_configuration() {
    let fake = FakeLlm::start(Some(KEY)).await;
    for kind in KINDS {
        let models = client(&fake, kind, Some(KEY))
            .list_models()
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(models, ["fake-model-1", "fake-model-2"], "{kind}");
    }
    let http = fleetgate_ai::http_client().expect("http");
    let cfg = |kind, base: Option<&str>, key: Option<&str>| ProviderConfig {
        kind,
        base_url: base.map(str::to_string),
        api_key: key.map(str::to_string),
        timeout: Duration::from_secs(1),
    };
    for (kind, base, key) in [
        (ProviderKind::OpenAiCompatible, None, None),
        (ProviderKind::OpenAi, None, None),
        (ProviderKind::OpenAi, Some("ftp://x"), Some(KEY)),
        (ProviderKind::OpenAi, Some("http://user:pw@x"), Some(KEY)),
        (ProviderKind::OpenAi, Some("http://x/?key=1"), Some(KEY)),
    ] {
        assert!(
            matches!(
                ProviderClient::new(http.clone(), cfg(kind, base, key)),
                Err(AiError::Config(_))
            ),
            "{kind} {base:?}"
        );
    }
    // A local OpenAI-compatible server may need no key.
    let open = FakeLlm::start(None).await;
    let c = ProviderClient::new(
        http.clone(),
        cfg(
            ProviderKind::OpenAiCompatible,
            Some(&format!("{}/", open.openai_url())),
            None,
        ),
    )
    .expect("no key needed");
    assert_eq!(c.base_url(), open.openai_url());
    assert_eq!(
        c.complete(&ChatRequest::new("m", "ping"))
            .await
            .expect("echo")
            .text,
        "echo: ping"
    );
    assert!(!open.requests()[0].headers.contains_key("authorization"));
    // Nothing listens: a transport error, quickly.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let c = ProviderClient::new(
        http,
        cfg(
            ProviderKind::Anthropic,
            Some(&format!("http://127.0.0.1:{port}")),
            Some(KEY),
        ),
    )
    .expect("client");
    assert!(matches!(c.list_models().await, Err(AiError::Transport(_))));
}

#[tokio::test]
async fn a_server_that_ignores_stream_still_answers() {
    let fake = FakeLlm::start(None).await;
    // A whole JSON answer to a streamed request.
    fake.push(Reply::raw(
        200,
        "application/json",
        r#"{"id":"x","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"whole"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
    ));
    let c = client(&fake, ProviderKind::OpenAiCompatible, None);
    let (pieces, done) = read_stream(&c, &request()).await;
    assert_eq!(pieces, ["whole"]);
    assert_eq!(done.usage.total_tokens(), 4);
}

/// Tool calls scripted in each format come back as the same calls, and the
/// results sent back reach the provider in its own shape.
#[tokio::test]
async fn tool_calls_in_every_format() {
    use fleetgate_ai::{ChatMessage, ToolDefinition, ToolResult};
    use serde_json::json;
    let fake = FakeLlm::start(Some(KEY)).await;
    for kind in KINDS {
        fake.push(Reply::tool_calls(vec![
            ("lookup", json!({"host": "db-1"})),
            ("ping", json!("{not json")),
        ]));
        let mut req = request().tools(vec![ToolDefinition {
            name: "lookup".into(),
            description: "Looks a host up".into(),
            parameters: json!({"type": "object"}),
        }]);
        let c = client(&fake, kind, Some(KEY))
            .complete(&req)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(c.finish_reason, FinishReason::ToolCalls, "{kind}");
        assert_eq!(c.tool_calls.len(), 2, "{kind}");
        assert_eq!(c.tool_calls[0].name, "lookup");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&c.tool_calls[0].arguments).expect("json"),
            json!({"host": "db-1"}),
            "{kind}"
        );
        assert_eq!(c.tool_calls[1].arguments, "{not json", "{kind}");
        req.messages
            .push(ChatMessage::assistant_calls("", c.tool_calls.clone()));
        req.messages.push(ChatMessage::tool_results(
            c.tool_calls
                .iter()
                .map(|t| ToolResult {
                    call_id: t.id.clone(),
                    name: t.name.clone(),
                    content: format!("result of {}", t.name),
                    is_error: false,
                })
                .collect(),
        ));
        fake.push(Reply::text("db-1 is 10.0.0.5"));
        let c = client(&fake, kind, Some(KEY))
            .complete(&req)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(c.text, "db-1 is 10.0.0.5");
        assert!(c.tool_calls.is_empty());
        let sent = fake.requests().last().expect("request").body.to_string();
        assert!(sent.contains("result of lookup"), "{kind}: {sent}");
    }
}

/// Streamed answers that ask for tools give the same calls, their arguments
/// put together from the fragments each format streams.
#[tokio::test]
async fn streamed_tool_calls_in_every_format() {
    use serde_json::json;
    let fake = FakeLlm::start(Some(KEY)).await;
    for kind in KINDS {
        fake.push(Reply::tool_calls(vec![
            ("lookup", json!({"host": "db-1", "port": 5432})),
            ("ping", json!({"target": "héllo wörld"})),
        ]));
        let c = client(&fake, kind, Some(KEY))
            .stream(&request())
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(c.finish_reason, FinishReason::ToolCalls, "{kind}");
        let got: Vec<(String, serde_json::Value)> = c
            .tool_calls
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    serde_json::from_str(&t.arguments).unwrap_or_else(|e| panic!("{kind}: {e}")),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("lookup".to_string(), json!({"host": "db-1", "port": 5432})),
                ("ping".to_string(), json!({"target": "héllo wörld"})),
            ],
            "{kind}"
        );
        assert_ne!(c.tool_calls[0].id, c.tool_calls[1].id, "{kind}");
    }
}
