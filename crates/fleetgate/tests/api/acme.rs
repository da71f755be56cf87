//! ACME against Debian's `pebble`, run as a child process on free ports: a
//! certificate requested through the API is validated by pebble over HTTP-01
//! through the built-in gateway and then served by SNI; renewals raise
//! `certificate.renewed`, and with pebble gone `certificate.renewal_failed`
//! while the old certificate keeps serving.
//!
//! pebble resolves the test names through a tiny DNS responder of this file
//! (`-dnsserver`): every name is 127.0.0.1 except those starting with `nx-`,
//! which do not exist. The Debian package ships no TLS certificate for pebble's
//! own listener, so the test makes a CA and a certificate for 127.0.0.1 and
//! hands the CA to Fleetgate as `acme.ca_cert`.
//!
//! With two managers on one PostgreSQL (and NATS when `FLEETGATE_TEST_NATS_URL`
//! is set), pebble validates against the gateway of the manager that did not
//! place the order: the pending answers are shared through the store. A stored
//! answer past its expiry is not served. Deleting a deployment deletes the
//! certificate issued for it, unless a route still names its domains.
//!
//! Without pebble the tests skip with the reason, unless `FLEETGATE_TEST_PEBBLE=1`
//! says they must run (CI).

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

use crate::support::{
    config_in, expect_error, postgres_schema_url, send, spawn_app, spawn_with, unused_port, TestApp,
};

/// The pebble binary, or `None` (with the reason printed) when the tests may skip.
fn pebble_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("pebble"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("FLEETGATE_TEST_PEBBLE").as_deref() == Ok("1") {
            panic!("FLEETGATE_TEST_PEBBLE=1 but no pebble on PATH (apt-get install pebble)");
        }
        eprintln!("skipping ACME test: pebble is not installed (apt-get install pebble)");
    }
    found
}

/// Answers A queries with 127.0.0.1 (NXDOMAIN for `nx-*`), AAAA and others with
/// no record, on a UDP port of its own, until the process ends.
fn spawn_dns() -> u16 {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("dns bind");
    let port = sock.local_addr().expect("dns addr").port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            if let Some(reply) = dns_reply(&buf[..n]) {
                let _ = sock.send_to(&reply, peer);
            }
        }
    });
    port
}

fn dns_reply(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // The first question: labels up to the root, then type and class.
    let mut i = 12;
    let mut first_label = Vec::new();
    while *q.get(i)? != 0 {
        let len = usize::from(q[i]);
        if first_label.is_empty() {
            first_label = q.get(i + 1..i + 1 + len)?.to_vec();
        }
        i += 1 + len;
    }
    let question_end = i + 5;
    let question = q.get(12..question_end)?;
    let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
    let missing = first_label.starts_with(b"nx-");
    let answer = qtype == 1 && !missing;
    let mut r = Vec::with_capacity(question.len() + 32);
    r.extend_from_slice(&q[..2]);
    r.push(0x84 | (q[2] & 0x01)); // response, authoritative, RD copied
    r.push(if missing { 0x83 } else { 0x80 }); // RA; NXDOMAIN for nx-*
    r.extend_from_slice(&[0, 1, 0, u8::from(answer), 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if answer {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 1]);
    }
    Some(r)
}

/// A running pebble, stopped when dropped.
struct Pebble {
    child: Option<Child>,
    dir_port: u16,
    mgmt_port: u16,
    ca_pem: String,
}

impl Pebble {
    fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.dir_port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The root pebble issues under (it makes a new one at each start).
    async fn issuing_root(&self) -> Vec<u8> {
        let pem = self
            .client()
            .get(format!("https://127.0.0.1:{}/roots/0", self.mgmt_port))
            .send()
            .await
            .expect("pebble roots")
            .text()
            .await
            .expect("root pem");
        fleetgate_core::tls::pem_certificates(&pem).expect("root parses")[0].clone()
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("ca"),
            )
            .build()
            .expect("client")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The CA and server certificate of pebble's own HTTPS listeners, written in `dir`.
fn pebble_tls(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fleetgate test pebble CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("leaf");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
    std::fs::write(dir.join("cert.pem"), leaf.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write key");
}

/// Starts pebble validating HTTP-01 on `http_port` (the gateway's), resolving
/// through `dns_port`; waits until its directory answers.
async fn start_pebble(
    bin: &Path,
    dir: &Path,
    dir_port: u16,
    http_port: u16,
    dns_port: u16,
) -> Pebble {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).expect("read ca");
    let mgmt_port = unused_port();
    let config = json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{dir_port}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
        "certificate": cert,
        "privateKey": key,
        "httpPort": http_port,
        "tlsPort": unused_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false
    }});
    let config_path = dir.join("pebble.json");
    std::fs::write(&config_path, config.to_string()).expect("write pebble config");
    let child = Command::new(bin)
        .arg("-config")
        .arg(&config_path)
        .arg("-dnsserver")
        .arg(format!("127.0.0.1:{dns_port}"))
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_VA_ALWAYS_VALID", "0")
        // Deterministic runs: no nonces refused at random, every order validated.
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pebble");
    let pebble = Pebble {
        child: Some(child),
        dir_port,
        mgmt_port,
        ca_pem,
    };
    let client = pebble.client();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = client.get(pebble.directory_url()).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "pebble did not answer in 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pebble
}

/// Fleetgate trusting pebble's CA, then pebble validating on its gateway port.
async fn fleetgate_and_pebble(
    bin: &Path,
    renew_before_days: u64,
    check_interval_secs: u64,
) -> (TestApp, Pebble, tempfile::TempDir) {
    let pebble_dir = tempfile::tempdir().expect("tempdir");
    let dir_port = unused_port();
    // pebble's TLS files are written before Fleetgate starts: it reads the CA.
    pebble_tls(pebble_dir.path());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_in(dir.path());
    config.acme.directory_url = format!("https://127.0.0.1:{dir_port}/dir");
    config.acme.ca_cert = Some(pebble_dir.path().join("ca.pem"));
    config.acme.renew_before_days = renew_before_days;
    config.acme.check_interval_secs = check_interval_secs;
    config.acme.order_timeout_secs = 20;
    let dns = spawn_dns();
    let app = spawn_with(config, dir).await;
    let http_port = app.gateway.expect("gateway").port();
    let pebble = start_pebble(bin, pebble_dir.path(), dir_port, http_port, dns).await;
    (app, pebble, pebble_dir)
}

/// Connects to the gateway's TLS listener with `sni`, trusting `root`, until
/// the leaf served is `expected`: the gateway applies a certificate set it is
/// given in the background, so the first handshakes after a write may still
/// meet the set before it. Panics with what was served after 15 s.
async fn assert_serves(app: &TestApp, root: &[u8], sni: &str, expected: &[u8], why: &str) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.to_vec()))
        .expect("root");
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let addr = app
        .running
        .as_ref()
        .expect("running")
        .gateway_tls_addr
        .expect("tls listener");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        let served = match tokio_rustls::TlsConnector::from(config.clone())
            .connect(ServerName::try_from(sni.to_string()).expect("name"), tcp)
            .await
        {
            Ok(stream) => match stream.get_ref().1.peer_certificates() {
                Some(chain) if chain[0].as_ref() == expected => return,
                Some(_) => "another certificate".to_string(),
                None => "no certificate".to_string(),
            },
            Err(e) => format!("a failed handshake: {e}"),
        };
        assert!(
            Instant::now() < deadline,
            "{why}: {sni} still gets {served} after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn leaf_of(pem: &str) -> Vec<u8> {
    fleetgate_core::tls::pem_certificates(pem).expect("pem")[0].clone()
}

async fn events_of(app: &TestApp, event_type: &str) -> Vec<Value> {
    let v = app
        .get_json(&format!("/api/v1/events?type={event_type}&limit=100"))
        .await;
    v["items"].as_array().cloned().unwrap_or_default()
}

async fn stored_pem(app: &TestApp, name: &str) -> String {
    let rec = app.running.as_ref().expect("running").state.store.clone();
    fleetgate_store::CertificateStore::get_certificate(rec.as_ref(), name)
        .await
        .expect("get")
        .expect("exists")
        .cert_pem
}

#[tokio::test]
async fn acme_certificate_is_issued_over_http01_and_served_by_sni() {
    let Some(bin) = pebble_binary() else { return };
    let (app, pebble, _pebble_dir) = fleetgate_and_pebble(&bin, 30, 86_400).await;

    // Names HTTP-01 cannot prove are refused before the CA is asked.
    for bad in [json!(["*.fleetgate.test"]), json!(["10.0.0.1"]), json!([])] {
        let r = app
            .admin(Method::POST, "/api/v1/certificates/request")
            .json(&json!({ "domains": bad }))
            .send()
            .await
            .expect("post");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], "domains", "{bad}: {e}");
    }

    // A name the CA cannot validate: 502 with the CA's problem.
    let r = app
        .admin(Method::POST, "/api/v1/certificates/request")
        .json(&json!({ "domains": ["nx-missing.fleetgate.test"] }))
        .send()
        .await
        .expect("post");
    let e = expect_error(r, StatusCode::BAD_GATEWAY, "ACME_FAILED").await;
    assert!(!e["details"]["problem"].is_null(), "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap_or("")
            .contains("nx-missing.fleetgate.test"),
        "{e}"
    );

    // A name that resolves to the gateway: issued through HTTP-01 within 10 s.
    let started = Instant::now();
    let r = app
        .admin(Method::POST, "/api/v1/certificates/request")
        .json(&json!({ "domains": ["App.Fleetgate.test"], "email": "ops@fleetgate.test" }))
        .send()
        .await
        .expect("post");
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::CREATED);
    let cert: Value = r.json().await.expect("json");
    assert!(took <= Duration::from_secs(10), "issuance took {took:?}");
    assert_eq!(cert["name"], "app.fleetgate.test");
    assert_eq!(cert["source"], "acme");
    assert_eq!(cert["status"], "valid");
    assert_eq!(cert["sans"], json!(["app.fleetgate.test"]));
    assert_eq!(cert["acme_domains"], json!(["app.fleetgate.test"]));
    assert!(
        cert["issuer"].as_str().unwrap_or("").contains("Pebble"),
        "{cert}"
    );
    assert!(cert["renew_after"].is_string() && cert["not_after"].is_string());
    assert!(cert["renewal_error"].is_null());

    // The gateway serves it by SNI, chaining to pebble's issuing root.
    let root = pebble.issuing_root().await;
    let pem = stored_pem(&app, "app.fleetgate.test").await;
    assert_serves(
        &app,
        &root,
        "app.fleetgate.test",
        &leaf_of(&pem),
        "the certificate is served by SNI",
    )
    .await;

    // The challenge answers are gone once the order is done.
    let current = app.running.as_ref().expect("running").state.feed.current();
    assert!(current.challenges.answers.is_empty());

    // The ACME account is stored sealed and its creation audited.
    let audit = app.get_json("/api/v1/audit?target_type=acme_account").await;
    // Created by the first order (no contact), its contact set by the request
    // that gave one.
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["acme_account.update", "acme_account.create"],
        "{audit}"
    );
    assert_eq!(audit["items"][0]["after"]["email"], "ops@fleetgate.test");
    assert!(!audit.to_string().contains("PRIVATE KEY"));

    // An uploaded certificate is not replaced by a request of the same name.
    let up = crate::tls::cert(&["up.fleetgate.test"], 90);
    assert_eq!(
        crate::tls::upload(&app, "up", &up).await.status(),
        StatusCode::CREATED
    );
    let r = app
        .admin(Method::POST, "/api/v1/certificates/request")
        .json(&json!({ "name": "up", "domains": ["up.fleetgate.test"] }))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;
    let listed = app.get_json("/api/v1/certificates").await;
    let up_view = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|c| c["name"] == "up")
        .cloned()
        .expect("up listed");
    assert_eq!(up_view["source"], "upload");
    assert!(up_view["renew_after"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn acme_renewals_raise_events_and_a_failure_keeps_the_old_certificate() {
    let Some(bin) = pebble_binary() else { return };
    // Pebble's certificates last years: renewing 10 years before expiry makes
    // every one due, and the task looks every 2 seconds.
    let (app, mut pebble, _pebble_dir) = fleetgate_and_pebble(&bin, 3650, 2).await;
    let r = app
        .admin(Method::POST, "/api/v1/certificates/request")
        .json(&json!({ "domains": ["renew.fleetgate.test"] }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);

    // The background task renews it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        let ev = events_of(&app, "certificate.renewed").await;
        if let Some(e) = ev.first() {
            break e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no certificate.renewed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(renewed["severity"], "info");
    assert_eq!(renewed["details"]["certificate"], "renew.fleetgate.test");

    // An explicit renewal through the API, too.
    let r = app
        .admin(Method::POST, "/api/v1/certificates/renew")
        .json(&json!({ "name": "renew.fleetgate.test" }))
        .send()
        .await
        .expect("renew");
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["results"][0]["outcome"], "renewed", "{body}");
    let root = pebble.issuing_root().await;
    let before = stored_pem(&app, "renew.fleetgate.test").await;
    assert_serves(
        &app,
        &root,
        "renew.fleetgate.test",
        &leaf_of(&before),
        "the certificate is served by SNI",
    )
    .await;

    // The CA goes away: the next renewal fails, raises a warning, and the
    // certificate in force keeps serving.
    pebble.stop();
    let failed_at = Instant::now();
    let failed = loop {
        let ev = events_of(&app, "certificate.renewal_failed").await;
        if let Some(e) = ev.first() {
            break e.clone();
        }
        assert!(
            failed_at.elapsed() < Duration::from_secs(60),
            "no certificate.renewal_failed within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(failed["severity"], "warning");
    assert_eq!(failed["details"]["certificate"], "renew.fleetgate.test");
    let view = app
        .get_json("/api/v1/certificates/renew.fleetgate.test")
        .await;
    assert!(view["renewal_error"].is_string(), "{view}");
    assert!(view["renewal_error_at"].is_string(), "{view}");
    assert_eq!(
        stored_pem(&app, "renew.fleetgate.test").await,
        before,
        "the stored certificate is the one in force before the failure"
    );
    assert_serves(
        &app,
        &root,
        "renew.fleetgate.test",
        &leaf_of(&before),
        "the old certificate keeps serving over TLS",
    )
    .await;

    // Renewing an uploaded certificate is refused with the reason.
    let up = crate::tls::cert(&["up.fleetgate.test"], 90);
    crate::tls::upload(&app, "up", &up).await;
    let r = app
        .admin(Method::POST, "/api/v1/certificates/renew")
        .json(&json!({ "name": "up" }))
        .send()
        .await
        .expect("renew");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "name");
    app.stop().await;
}

/// GET `/.well-known/acme-challenge/<token>` through the gateway: status and body.
async fn challenge_via(gateway: std::net::SocketAddr, token: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!(
            "http://{gateway}/.well-known/acme-challenge/{token}"
        ))
        .header("host", "any.fleetgate.test")
        .send()
        .await
        .expect("gateway request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn stored_challenge_answers_are_served_until_they_expire() {
    use fleetgate_store::AcmeChallengeRecord;
    let app = spawn_app().await;
    let gateway = app.gateway.expect("gateway");
    let store = app.running.as_ref().expect("running").state.store.clone();
    let now = fleetgate_core::time::now_ms();
    let row = |token: &str, expires_at: i64| AcmeChallengeRecord {
        token: token.into(),
        key_authorization: format!("{token}.key"),
        identifier: "any.fleetgate.test".into(),
        expires_at,
        created_at: 0,
    };
    // As another manager would store them: one live for a minute, one already
    // expired (its manager stopped mid-order), one expiring in a few seconds.
    for r in [
        row("tok-live", now + 60_000),
        row("tok-expired", now - 1),
        row("tok-soon", now + 5_000),
    ] {
        store.put_acme_challenge(&r).await.expect("put");
    }
    // The follower polls the store (no NATS here): both live answers are served
    // within a period or two.
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let live = challenge_via(gateway, "tok-live").await;
        let soon = challenge_via(gateway, "tok-soon").await;
        if live == (200, "tok-live.key".into()) && soon == (200, "tok-soon.key".into()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stored answers were not served: {live:?} {soon:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = challenge_via(gateway, "tok-expired").await;
    assert_eq!(status, 404, "an expired answer is not served");
    let answers = &app
        .running
        .as_ref()
        .expect("running")
        .state
        .feed
        .current()
        .challenges
        .answers
        .clone();
    assert!(!answers.contains_key("tok-expired"), "{answers:?}");

    // At its expiry an answer is withdrawn with nothing else changing, and the
    // expired rows are pruned.
    let expiry = now + 5_000;
    loop {
        let (status, _) = challenge_via(gateway, "tok-soon").await;
        if status == 404 {
            break;
        }
        assert!(
            fleetgate_core::time::now_ms() < expiry + 3_000,
            "an answer was served 3 s past its expiry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fleetgate_core::time::now_ms() >= expiry, "withdrawn early");
    assert_eq!(challenge_via(gateway, "tok-live").await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while store
        .prune_acme_challenges(fleetgate_core::time::now_ms())
        .await
        .expect("prune")
        != 0
    {
        // The manager's own pruning races this one; either removes them.
        assert!(Instant::now() < deadline);
    }
    let live = store
        .live_acme_challenges(fleetgate_core::time::now_ms())
        .await
        .expect("live");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].token, "tok-live");
    app.stop().await;
}

/// Two managers sharing a fresh PostgreSQL schema and a secret key (and `nats`
/// when given), both trusting pebble's CA; pebble validates HTTP-01 against the
/// gateway of the second one only.
async fn two_managers_and_pebble(
    bin: &Path,
    url: &str,
    nats: Option<&str>,
) -> (TestApp, TestApp, Pebble, tempfile::TempDir) {
    let pebble_dir = tempfile::tempdir().expect("tempdir");
    let dir_port = unused_port();
    pebble_tls(pebble_dir.path());
    let key = hex::encode(
        [
            uuid::Uuid::new_v4().into_bytes(),
            uuid::Uuid::new_v4().into_bytes(),
        ]
        .concat(),
    );
    let mut apps = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("secret.key"), &key).expect("key file");
        let mut c = config_in(dir.path());
        c.database.url = Some(url.to_string());
        c.nats.url = nats.map(str::to_string);
        c.acme.directory_url = format!("https://127.0.0.1:{dir_port}/dir");
        c.acme.ca_cert = Some(pebble_dir.path().join("ca.pem"));
        c.acme.order_timeout_secs = 20;
        apps.push((c, dir));
    }
    let (cb, db) = apps.pop().expect("b");
    let (ca, da) = apps.pop().expect("a");
    let (a, b) = tokio::join!(spawn_with(ca, da), spawn_with(cb, db));
    if nats.is_some() {
        for app in [&a, &b] {
            crate::scale_out::wait_for_bus(app, Duration::from_secs(15)).await;
        }
    }
    let dns = spawn_dns();
    let b_port = b.gateway.expect("gateway of B").port();
    let pebble = start_pebble(bin, pebble_dir.path(), dir_port, b_port, dns).await;
    (a, b, pebble, pebble_dir)
}

/// An order placed through manager A is validated by pebble against manager B's
/// gateway alone: B answers from the shared store, and serves the certificate.
async fn order_on_one_manager_validated_on_the_other(nats: Option<&str>) {
    let Some(bin) = pebble_binary() else { return };
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let (a, b, pebble, _pebble_dir) = two_managers_and_pebble(&bin, &url, nats).await;
    let started = Instant::now();
    let r = a
        .admin(Method::POST, "/api/v1/certificates/request")
        .json(&json!({ "domains": ["shared.fleetgate.test", "www.shared.fleetgate.test"] }))
        .send()
        .await
        .expect("post");
    let took = started.elapsed();
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["source"], "acme");
    assert!(took <= Duration::from_secs(20), "issuance took {took:?}");

    // B serves the certificate too (its follower loads it from the store).
    let root = pebble.issuing_root().await;
    let pem = stored_pem(&a, "shared.fleetgate.test").await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let state_b = b.running.as_ref().expect("running").state.clone();
    while !state_b
        .feed
        .current()
        .certificates
        .bundles
        .iter()
        .any(|c| c.name == "shared.fleetgate.test")
    {
        assert!(Instant::now() < deadline, "B never loaded the certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_serves(
        &b,
        &root,
        "www.shared.fleetgate.test",
        &leaf_of(&pem),
        "the certificate is served by SNI",
    )
    .await;

    // The answers are gone from the store and, soon, from both data planes.
    let store = state_b.store.clone();
    let live = fleetgate_store::CertificateStore::live_acme_challenges(
        store.as_ref(),
        fleetgate_core::time::now_ms(),
    )
    .await
    .expect("live");
    assert!(live.is_empty(), "{live:?}");
    let deadline = Instant::now() + Duration::from_secs(40);
    for app in [&a, &b] {
        let state = app.running.as_ref().expect("running").state.clone();
        while !state.feed.current().challenges.answers.is_empty() {
            assert!(Instant::now() < deadline, "answers left published");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_order_placed_on_one_manager_is_answered_by_another_polling_the_store() {
    order_on_one_manager_validated_on_the_other(None).await;
}

#[tokio::test]
async fn an_order_placed_on_one_manager_is_answered_by_another_told_over_nats() {
    let Ok(nats) = std::env::var("FLEETGATE_TEST_NATS_URL") else {
        eprintln!("skipping: FLEETGATE_TEST_NATS_URL is not set");
        return;
    };
    order_on_one_manager_validated_on_the_other(Some(&nats)).await;
}

/// Creates a deployment (not started) routing `domain`, with `ssl` as given.
async fn deployment(app: &TestApp, name: &str, domain: &str, ssl: bool) {
    let compose = "services:\n  web:\n    command: [\"sleep\", \"600\"]\n";
    let service = format!("domains: [{domain}]\nport: {}\nssl: {ssl}\n", unused_port());
    let (s, v) = send(
        app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": name, "compose": compose, "service": service, "start": false})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Waits until deployment `name`'s certificate is issued.
async fn ssl_issued(app: &TestApp, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = app.get_json(&format!("/api/v1/deployments/{name}")).await;
        if v["ssl_status"] == "issued" {
            return;
        }
        assert!(
            v["ssl_status"] != "failed" && Instant::now() < deadline,
            "certificate of {name} not issued: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn certificate_status(app: &TestApp, name: &str) -> StatusCode {
    app.admin(Method::GET, &format!("/api/v1/certificates/{name}"))
        .send()
        .await
        .expect("get")
        .status()
}

/// How many `certificate.renewed` events name certificate `name`.
async fn renewals_of(app: &TestApp, name: &str) -> usize {
    events_of(app, "certificate.renewed")
        .await
        .iter()
        .filter(|e| e["details"]["certificate"] == name)
        .count()
}

#[tokio::test]
async fn deleting_a_deployment_deletes_its_certificate_unless_its_names_are_still_routed() {
    let Some(bin) = pebble_binary() else { return };
    // Every ACME certificate is due at once and the renewal task looks every 2 s:
    // renewals run all along, so a deleted certificate would show up again.
    let (app, _pebble, _pebble_dir) = fleetgate_and_pebble(&bin, 3650, 2).await;
    deployment(&app, "shop", "shop.fleetgate.test", true).await;
    deployment(&app, "blog", "blog.fleetgate.test", true).await;
    ssl_issued(&app, "shop").await;
    ssl_issued(&app, "blog").await;
    assert_eq!(
        certificate_status(&app, "deploy-shop").await,
        StatusCode::OK
    );
    // A route of its own still names blog's domain.
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/upstreams",
        Some(json!({"name": "admin", "targets": [{"url": "http://127.0.0.1:9"}]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/routes",
        Some(json!({"id": "blog-admin", "hosts": ["blog.fleetgate.test"], "path": "/admin", "upstream": "admin"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // An uploaded certificate named like a deployment's is the operator's.
    deployment(&app, "plain", "plain.fleetgate.test", false).await;
    let up = crate::tls::cert(&["plain.fleetgate.test"], 90);
    assert_eq!(
        crate::tls::upload(&app, "deploy-plain", &up).await.status(),
        StatusCode::CREATED
    );

    // Deleting shop deletes its certificate, audited, and no longer serves it.
    let (s, _) = send(&app, Method::DELETE, "/api/v1/deployments/shop", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        certificate_status(&app, "deploy-shop").await,
        StatusCode::NOT_FOUND
    );
    let audit = app
        .get_json("/api/v1/audit?target_type=certificate&action=certificate.delete&limit=100")
        .await;
    let deleted = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["action"] == "certificate.delete" && e["target_id"] == "deploy-shop")
        .cloned()
        .unwrap_or_else(|| panic!("no certificate.delete of deploy-shop: {audit}"));
    assert_ne!(deleted["actor"], "system", "{deleted}");
    let state = app.running.as_ref().expect("running").state.clone();
    assert!(!state
        .feed
        .current()
        .certificates
        .bundles
        .iter()
        .any(|b| b.name == "deploy-shop"));

    // Blog's names are still routed: its certificate is kept, said so, and
    // renewed on.
    let (s, _) = send(&app, Method::DELETE, "/api/v1/deployments/blog", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        certificate_status(&app, "deploy-blog").await,
        StatusCode::OK
    );
    // Events are stored in the background: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let kept = loop {
        let kept = events_of(&app, "certificate.kept").await;
        if !kept.is_empty() || Instant::now() > deadline {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["details"]["certificate"], "deploy-blog");
    assert_eq!(kept[0]["details"]["used_by"], json!(["route blog-admin"]));

    let (s, _) = send(&app, Method::DELETE, "/api/v1/deployments/plain", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        certificate_status(&app, "deploy-plain").await,
        StatusCode::OK
    );

    // Renewals go on for blog and never bring shop's back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (shop_before, blog_before) = (
        renewals_of(&app, "deploy-shop").await,
        renewals_of(&app, "deploy-blog").await,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while renewals_of(&app, "deploy-blog").await == blog_before {
        assert!(
            Instant::now() < deadline,
            "the kept certificate is not renewed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(renewals_of(&app, "deploy-shop").await, shop_before);
    assert_eq!(
        certificate_status(&app, "deploy-shop").await,
        StatusCode::NOT_FOUND
    );
    let failed = events_of(&app, "certificate.renewal_failed").await;
    assert!(
        !failed
            .iter()
            .any(|e| e["details"]["certificate"] == "deploy-shop"),
        "{failed:?}"
    );
    app.stop().await;
}
