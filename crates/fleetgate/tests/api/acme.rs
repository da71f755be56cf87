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

use crate::support::{config_in, expect_error, spawn_with, unused_port, TestApp};

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

/// Connects to the gateway's TLS listener with `sni`, trusting `root`; the leaf served.
async fn served_leaf(app: &TestApp, root: &[u8], sni: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.to_vec()))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = app
        .running
        .as_ref()
        .expect("running")
        .gateway_tls_addr
        .expect("tls listener");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).expect("name"), tcp)
        .await
        .expect("TLS handshake with the ACME certificate");
    stream.get_ref().1.peer_certificates().expect("peer certs")[0].to_vec()
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
    assert_eq!(
        served_leaf(&app, &root, "app.fleetgate.test").await,
        leaf_of(&pem)
    );

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
    let pem = stored_pem(&app, "renew.fleetgate.test").await;
    assert_eq!(
        served_leaf(&app, &root, "renew.fleetgate.test").await,
        leaf_of(&pem),
        "the old certificate keeps serving"
    );

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
