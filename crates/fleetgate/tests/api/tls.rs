//! TLS termination: certificates uploaded through the API, chosen by SNI,
//! HTTP/1.1 and HTTP/2 (ALPN) over TLS, HTTPS redirects, certificate status.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::{Client, Method, StatusCode};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

use crate::support::{expect_error, spawn_app, TestApp};
use crate::upstream;

pub(crate) struct Cert {
    pub pem: String,
    pub key: String,
    pub der: Vec<u8>,
}

pub(crate) fn cert(names: &[&str], days_valid: i64) -> Cert {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now + time::Duration::days(days_valid);
    let key = rcgen::KeyPair::generate().expect("key");
    let c = params.self_signed(&key).expect("self-signed");
    Cert {
        pem: c.pem(),
        key: key.serialize_pem(),
        der: c.der().to_vec(),
    }
}

pub(crate) async fn upload(app: &TestApp, name: &str, c: &Cert) -> reqwest::Response {
    app.admin(Method::POST, "/api/v1/certificates")
        .json(&json!({"name": name, "cert_pem": c.pem, "key_pem": c.key}))
        .send()
        .await
        .expect("upload")
}

fn client_config(roots: &[&Cert], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store
            .add(CertificateDer::from(c.der.clone()))
            .expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects with `sni`, returns the presented leaf, the ALPN protocol and the stream.
async fn connect(
    app: &TestApp,
    roots: &[&Cert],
    sni: &str,
    alpn: &[&[u8]],
) -> (
    Vec<u8>,
    Option<Vec<u8>>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let addr = app
        .running
        .as_ref()
        .expect("running")
        .gateway_tls_addr
        .expect("tls listener");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let connector = tokio_rustls::TlsConnector::from(client_config(roots, alpn));
    let stream = connector
        .connect(ServerName::try_from(sni.to_string()).expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates().expect("peer certs")[0].to_vec();
    let proto = conn.alpn_protocol().map(|p| p.to_vec());
    (leaf, proto, stream)
}

#[tokio::test]
async fn certificates_are_served_by_sni_over_http1_and_http2() {
    let app = spawn_app().await;
    let up = upstream::spawn("secure").await;
    let a = cert(&["a.test"], 365);
    let b = cert(&["*.b.test"], 10);
    let expired = cert(&["old.test"], -1);

    // Bad uploads name the field and store nothing.
    let r = app
        .admin(Method::POST, "/api/v1/certificates")
        .json(&json!({"name": "x", "cert_pem": "nope", "key_pem": a.key}))
        .send()
        .await
        .expect("post");
    assert_eq!(
        expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await["details"]["field"],
        "cert_pem"
    );
    let r = app
        .admin(Method::POST, "/api/v1/certificates")
        .json(&json!({"name": "x", "cert_pem": a.pem, "key_pem": b.key}))
        .send()
        .await
        .expect("post");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "key_pem");
    assert!(
        e["error"]
            .as_str()
            .expect("msg")
            .contains("does not belong"),
        "{e}"
    );
    let r = app
        .admin(Method::POST, "/api/v1/certificates")
        .json(&json!({"name": "../x", "cert_pem": a.pem, "key_pem": a.key}))
        .send()
        .await
        .expect("post");
    assert_eq!(
        expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await["details"]["field"],
        "name"
    );

    for (name, c) in [("site-a", &a), ("wild-b", &b), ("old", &expired)] {
        let r = upload(&app, name, c).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = upload(&app, "site-a", &a).await;
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;
    let list = app.get_json("/api/v1/certificates").await;
    let by_name = |n: &str| {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|c| c["name"] == n)
            .expect("listed")
            .clone()
    };
    assert_eq!(by_name("site-a")["status"], "valid");
    assert_eq!(by_name("site-a")["sans"], json!(["a.test"]));
    assert_eq!(by_name("wild-b")["status"], "expiring");
    assert_eq!(by_name("old")["status"], "expired");
    assert!(by_name("site-a")["not_after"]
        .as_str()
        .expect("time")
        .ends_with('Z'));
    assert!(
        !list.to_string().contains("PRIVATE KEY"),
        "keys are never returned"
    );
    let audit = app.get_json("/api/v1/audit?target_type=certificate").await;
    assert_eq!(audit["total"], 3);
    assert!(
        !audit.to_string().contains("PRIVATE KEY"),
        "keys stay out of the audit log"
    );

    app.post_ok(
        "/api/v1/routes",
        json!({"id": "r", "path": "/", "upstream": up.url()}),
    )
    .await;
    app.post_ok("/api/v1/routes", json!({"id": "force", "path": "/secure-only", "upstream": up.url(), "https_redirect": true})).await;
    app.settle().await;

    // SNI picks the certificate: exact name, then wildcard.
    let (leaf, proto, stream) = connect(&app, &[&a, &b], "a.test", &[b"http/1.1"]).await;
    assert_eq!(leaf, a.der);
    assert_eq!(proto.as_deref(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            hyper::Request::get("/hello")
                .header("host", "a.test")
                .body(Empty::<Bytes>::new())
                .expect("req"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");

    let (leaf, proto, stream) = connect(&app, &[&a, &b], "api.b.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(leaf, b.der);
    assert_eq!(proto.as_deref(), Some(&b"h2"[..]), "ALPN negotiates HTTP/2");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2");
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            hyper::Request::get("https://api.b.test/over-h2")
                .body(Empty::<Bytes>::new())
                .expect("req"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    // The upstream's own headers reach HTTP/2 clients too (the HTTP/1.1 path keeps
    // them as raw lines; hyper's server gets them as a header map).
    assert!(
        resp.headers().contains_key("x-upstream"),
        "{:?}",
        resp.headers()
    );
    assert_eq!(resp.headers()["content-type"], "application/json");

    // HTTP -> HTTPS redirect where the route asks for it.
    let tls_port = app
        .running
        .as_ref()
        .expect("running")
        .gateway_tls_addr
        .expect("tls")
        .port();
    let r = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(app.gw("/secure-only/x?y=1"))
        .header("host", "shop.example")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.headers()["location"],
        format!("https://shop.example:{tls_port}/secure-only/x?y=1").as_str()
    );

    // Deleting a certificate stops serving it (the fallback takes over).
    let r = app
        .admin(Method::DELETE, "/api/v1/certificates/site-a")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let addr = app
        .running
        .as_ref()
        .expect("running")
        .gateway_tls_addr
        .expect("tls");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let handshake = tokio_rustls::TlsConnector::from(client_config(&[&a], &[]))
        .connect(ServerName::try_from("a.test").expect("name"), tcp)
        .await;
    assert!(
        handshake.is_err(),
        "a.test is no longer served with its own certificate"
    );
    app.stop().await;
}

/// An HTTPS upstream with a self-signed certificate for `upstream.test` and 127.0.0.1.
async fn tls_upstream(c: &Cert) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject;
    let chain = vec![CertificateDer::from(c.der.clone())];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from(format!("tls ok {host}"))),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let app = spawn_app().await;
    let c = cert(&["upstream.test", "127.0.0.1"], 30);
    let (addr, _server) = tls_upstream(&c).await;
    let url = format!("https://{addr}");
    for (name, tls) in [
        ("trusted", json!({"ca_pem": c.pem})),
        ("by-name", json!({"ca_pem": c.pem, "sni": "upstream.test"})),
        ("unverified", json!({"verify": false})),
        ("untrusted", json!({})),
    ] {
        app.post_ok("/api/v1/upstreams", json!({"name": name, "targets": [{"url": url}], "tls": tls, "retries": {"attempts": 0}})).await;
        app.post_ok(
            "/api/v1/routes",
            json!({"id": name, "path": format!("/{name}"), "upstream": name}),
        )
        .await;
    }
    app.settle().await;
    let c2 = Client::new();
    for name in ["trusted", "by-name", "unverified"] {
        let r = c2
            .get(app.gw(&format!("/{name}")))
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), StatusCode::OK, "{name}");
        assert!(
            r.text().await.expect("text").starts_with("tls ok"),
            "{name}"
        );
    }
    let r = c2.get(app.gw("/untrusted")).send().await.expect("req");
    let e = expect_error(r, StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR").await;
    assert!(
        e["error"].as_str().expect("msg").contains("untrusted"),
        "{e}"
    );
    let health = app.get_json("/api/v1/upstreams/untrusted/health").await;
    assert!(
        health[0]["last_error"]
            .as_str()
            .expect("error")
            .contains("TLS handshake"),
        "{health}"
    );
    app.stop().await;
}
