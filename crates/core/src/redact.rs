//! Credentials hidden from URLs before they reach logs, errors and the printed
//! configuration: the store's database URL, Redis, NATS and webhook URLs.

/// The URL with its credentials replaced by `***`:
///
/// - `scheme://user:secret@host` → `scheme://user:***@host`;
/// - `scheme://token@host` → `scheme://***@host` (a user without a password is
///   taken as a token, as NATS does);
/// - query values whose name contains `password`, `secret` or `token` (any case),
///   e.g. `?sslmode=require&password=x` → `?sslmode=require&password=***`.
///
/// Everything between `://` (or the start, without a scheme) and the last `@` is
/// taken as credentials, so a password holding a raw `/`, `?`, `#` or `@` (not
/// valid in a URL, but written by hand) still does not show; the price is that a
/// URL with an `@` in its path or query shows less of itself. A URL without an
/// authority (`sqlite:///path`) has no credentials and keeps its `@`s.
pub fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..start]);
    let mut rest = &url[start..];
    let has_authority = !rest.is_empty() && !rest.starts_with('/');
    if let Some(at) = rest.rfind('@').filter(|_| has_authority) {
        match rest[..at].split_once(':') {
            // A user name holds no `/`, `?` or `#`; with one, the `@` was not the
            // end of the credentials and all of it is hidden.
            Some((user, _)) if !user.contains(['/', '?', '#']) => {
                out.push_str(user);
                out.push_str(":***");
            }
            _ => out.push_str("***"),
        }
        rest = &rest[at..];
    }
    match rest.split_once('?') {
        None => out.push_str(rest),
        Some((before, query)) => {
            out.push_str(before);
            out.push('?');
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((k, _)) if secret_name(k) => {
                        out.push_str(k);
                        out.push_str("=***");
                    }
                    _ => out.push_str(pair),
                }
            }
        }
    }
    out
}

fn secret_name(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|s| key.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hides_passwords_tokens_and_secret_query_values() {
        for (url, shown) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("host:4222", "host:4222"),
            ("nats://user:secret@host:4222", "nats://user:***@host:4222"),
            ("nats://s3cr3t-token@host", "nats://***@host"),
            ("tls://u:p@h/x?y=1", "tls://u:***@h/x?y=1"),
            (
                "postgres://fg:s3cret@db:5432/fg?sslmode=require&password=x",
                "postgres://fg:***@db:5432/fg?sslmode=require&password=***",
            ),
            (
                "postgres://fg@db/fg?sslpassword=k&PASSWORD=y&application_name=fg",
                "postgres://***@db/fg?sslpassword=***&PASSWORD=***&application_name=fg",
            ),
            ("redis://:pw@127.0.0.1:6379", "redis://:***@127.0.0.1:6379"),
            ("redis://u:@h", "redis://u:***@h"),
            ("redis://:p@ss/w?rd#x@h:6379/0", "redis://:***@h:6379/0"),
            ("u:p@host", "u:***@host"),
            ("postgres://h/db?password=x:@y", "postgres://***@y"),
            (
                "https://hooks.example/x?auth_token=abc&v=1",
                "https://hooks.example/x?auth_token=***&v=1",
            ),
            (
                "sqlite:///srv/a@b/fleetgate.db",
                "sqlite:///srv/a@b/fleetgate.db",
            ),
            ("sqlite://", "sqlite://"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    /// Characters of a password written into a URL, by hand or percent-encoded:
    /// everything printable but whitespace.
    const PASSWORD: &str = "[!-~]{1,24}";
    const USER: &str = "[a-z0-9_.-]{0,12}";
    const HOST: &str = "[a-z0-9.-]{1,20}(:[0-9]{1,5})?";
    /// No `Z` in the tail: `ZZ` marks the password below.
    const TAIL: &str = "(/[a-yA-Y0-9_./-]{0,20})?(\\?[a-z_]{1,8}=[a-z0-9]{0,8})?";

    proptest! {
        #[test]
        fn a_password_in_the_userinfo_never_survives(
            scheme in "(postgres|redis|rediss|nats|tls|wss|https)",
            user in USER,
            password in PASSWORD,
            host in HOST,
            tail in TAIL,
        ) {
            // A marker that the rest of the URL cannot produce.
            let password = format!("ZZ{password}ZZ");
            let url = format!("{scheme}://{user}:{password}@{host}{tail}");
            let shown = redact_url(&url);
            prop_assert!(!shown.contains("ZZ"), "{url} → {shown}");
            prop_assert_eq!(shown, format!("{scheme}://{user}:***@{host}{tail}"));
        }

        #[test]
        fn a_token_as_user_never_survives(token in "[a-zA-Z0-9_.~-]{1,30}", host in HOST) {
            let shown = redact_url(&format!("nats://ZZ{token}@{host}"));
            prop_assert_eq!(shown, format!("nats://***@{host}"));
        }

        #[test]
        fn a_password_in_the_query_never_survives(
            host in HOST,
            name in "(password|sslpassword|Password|client_secret|access_token)",
            value in "[!-%'-~]{1,24}",
            other in "[a-z]{1,8}=[a-z0-9]{0,8}",
        ) {
            let value = format!("ZZ{value}");
            for url in [
                format!("postgres://{host}/db?{name}={value}"),
                format!("postgres://{host}/db?{other}&{name}={value}&{other}"),
            ] {
                let shown = redact_url(&url);
                prop_assert!(!shown.contains("ZZ"), "{url} → {shown}");
            }
        }

        #[test]
        fn a_url_without_credentials_is_unchanged(
            scheme in "(postgres|redis|nats|https)",
            host in HOST,
            tail in TAIL,
        ) {
            let url = format!("{scheme}://{host}{tail}");
            prop_assume!(!url.contains("password") && !url.contains("secret") && !url.contains("token"));
            prop_assert_eq!(redact_url(&url), url);
        }

        #[test]
        fn never_panics(s in "\\PC{0,60}") {
            let _ = redact_url(&s);
        }
    }
}
