//! `fleetgate export nginx`: for operators who keep nginx in front, one vhost
//! file per routed deployment (`fleetgate-<name>.conf`: its domains proxied to its
//! port, WebSockets passed through), written into nginx's include directory,
//! checked with `nginx -t`, and rolled back to the files that were there before
//! when nginx refuses them — a vhost that fails validation never replaces a
//! working one. A deployment released blue-green listens on a new port with
//! each release: run the export again after a release, or give it
//! `deploy.strategy: recreate`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::deployments::{target_port, Deployments};

/// Prefix of the files this export owns in the include directory; files without
/// it are never touched.
pub const FILE_PREFIX: &str = "fleetgate-";

/// One vhost: a deployment's domains and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vhost {
    pub deployment: String,
    pub domains: Vec<String>,
    pub port: u16,
    /// `https` when the app serves TLS itself (`networking.protocol`), else
    /// `http`.
    pub scheme: &'static str,
    /// Paths of the certificate and key nginx should serve (both, or none).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The text of a vhost file.
pub fn render(v: &Vhost) -> String {
    let names = v.domains.join(" ");
    let upstream = format!("{}://127.0.0.1:{}", v.scheme, v.port);
    let proxy = format!(
        "    location / {{\n        proxy_pass {upstream};\n        proxy_http_version 1.1;\n        proxy_set_header Host $host;\n        proxy_set_header X-Real-IP $remote_addr;\n        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n        proxy_set_header X-Forwarded-Proto $scheme;\n        proxy_set_header Upgrade $http_upgrade;\n        proxy_set_header Connection $fleetgate_connection_upgrade;\n    }}\n"
    );
    let mut out = format!(
        "# Written by `fleetgate export nginx` for deployment {}; rewritten on every export.\n",
        v.deployment
    );
    // nginx refuses a second definition of one map variable in its http block,
    // so each file's is named after its deployment.
    let map_var = format!("$fleetgate_upgrade_{}", v.deployment.replace('-', "_"));
    let proxy = proxy.replace("$fleetgate_connection_upgrade", &map_var);
    out.push_str(&format!(
        "map $http_upgrade {map_var} {{\n    default upgrade;\n    '' close;\n}}\n\n"
    ));
    match &v.tls {
        None => out.push_str(&format!(
            "server {{\n    listen 80;\n    server_name {names};\n{proxy}}}\n"
        )),
        Some((cert, key)) => out.push_str(&format!(
            "server {{\n    listen 80;\n    server_name {names};\n    return 301 https://$host$request_uri;\n}}\n\nserver {{\n    listen 443 ssl;\n    server_name {names};\n    ssl_certificate {};\n    ssl_certificate_key {};\n{proxy}}}\n",
            cert.display(),
            key.display()
        )),
    }
    out
}

/// The vhosts of every deployment with domains and a port.
pub async fn vhosts(deployments: &Deployments) -> Result<Vec<Vhost>, String> {
    let mut out = Vec::new();
    for name in deployments.names().await.map_err(|e| e.to_string())? {
        let l = deployments
            .load(&name)
            .await
            .map_err(|e| format!("deployment {name}: {e}"))?;
        // Routed when it has domains and a port, as the gateway's proxy is: at
        // the port its serving release listens on (blue-green releases each
        // have their own, so the export is run again after a release), else
        // the port its files give.
        let port = l
            .record
            .serving_port
            .or_else(|| target_port(&l.compose, &l.meta));
        if let (false, Some(port)) = (l.meta.domains.is_empty(), port) {
            out.push(Vhost {
                deployment: name,
                domains: l.meta.domains.clone(),
                port,
                scheme: l.meta.protocol.scheme(),
                tls: None,
            });
        }
    }
    Ok(out)
}

/// What an export did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub written: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
}

/// Writes `vhosts` into `dir` (replacing this export's earlier files, removing
/// those of deployments gone), then runs `check` (`nginx -t …`). If the check
/// fails, every file is put back as it was and the error carries nginx's output.
pub fn write_checked(
    dir: &Path,
    vhosts: &[Vhost],
    check: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Exported, String> {
    let wanted: BTreeMap<PathBuf, String> = vhosts
        .iter()
        .map(|v| {
            (
                dir.join(format!("{FILE_PREFIX}{}.conf", v.deployment)),
                render(v),
            )
        })
        .collect();
    // What is there now, to put back on failure.
    let mut before: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let path = e.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(FILE_PREFIX) && n.ends_with(".conf"));
        if ours {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            before.insert(path, bytes);
        }
    }
    let restore = |before: &BTreeMap<PathBuf, Vec<u8>>| {
        for path in wanted.keys() {
            if !before.contains_key(path) {
                let _ = std::fs::remove_file(path);
            }
        }
        for (path, bytes) in before {
            let _ = std::fs::write(path, bytes);
        }
    };
    let mut written = Vec::new();
    for (path, text) in &wanted {
        let tmp = path.with_extension("conf.tmp");
        let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            restore(&before);
            return Err(format!("{}: {e}", path.display()));
        }
        written.push(path.clone());
    }
    let mut removed = Vec::new();
    for path in before.keys() {
        if !wanted.contains_key(path) {
            if let Err(e) = std::fs::remove_file(path) {
                restore(&before);
                return Err(format!("{}: {e}", path.display()));
            }
            removed.push(path.clone());
        }
    }
    if let Err(e) = check() {
        restore(&before);
        return Err(format!(
            "nginx refused the exported configuration, so the previous files were restored:\n{e}"
        ));
    }
    Ok(Exported { written, removed })
}

/// Runs `nginx -t` (with `args` after it, e.g. `-c <file>`); its output on failure.
pub fn nginx_test(nginx: &Path, args: &[String]) -> Result<(), String> {
    let out = std::process::Command::new(nginx)
        .arg("-t")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nginx.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vhost(name: &str, port: u16) -> Vhost {
        Vhost {
            deployment: name.into(),
            domains: vec![format!("{name}.example.com")],
            port,
            scheme: "http",
            tls: None,
        }
    }

    #[test]
    fn a_vhost_proxies_its_domains_with_websockets() {
        let text = render(&vhost("blog", 8082));
        assert!(text.contains("server_name blog.example.com;"), "{text}");
        assert!(text.contains("proxy_pass http://127.0.0.1:8082;"), "{text}");
        assert!(text.contains("$fleetgate_upgrade_blog"), "{text}");
        let tls = render(&Vhost {
            tls: Some(("/c.pem".into(), "/k.pem".into())),
            ..vhost("blog", 1)
        });
        assert!(tls.contains("listen 443 ssl;") && tls.contains("ssl_certificate /c.pem;"));
        // An app serving TLS itself is proxied over TLS.
        let https = render(&Vhost {
            scheme: "https",
            ..vhost("secure", 8443)
        });
        assert!(
            https.contains("proxy_pass https://127.0.0.1:8443;"),
            "{https}"
        );
    }

    #[test]
    fn a_refused_export_restores_the_files_before_it() {
        let dir = tempfile::tempdir().expect("dir");
        let keep = dir.path().join("other.conf");
        std::fs::write(&keep, "not ours").expect("write");
        let old = dir.path().join("fleetgate-gone.conf");
        std::fs::write(&old, "old gone").expect("write");
        let kept = dir.path().join("fleetgate-blog.conf");
        std::fs::write(&kept, "old blog").expect("write");
        let err = write_checked(
            dir.path(),
            &[vhost("blog", 1), vhost("new", 2)],
            &mut || Err("emerg: bad".into()),
        )
        .expect_err("refused");
        assert!(err.contains("emerg: bad"), "{err}");
        assert_eq!(std::fs::read_to_string(&kept).expect("blog"), "old blog");
        assert_eq!(std::fs::read_to_string(&old).expect("gone"), "old gone");
        assert!(!dir.path().join("fleetgate-new.conf").exists());
        assert_eq!(std::fs::read_to_string(&keep).expect("other"), "not ours");

        let done = write_checked(dir.path(), &[vhost("blog", 1)], &mut || Ok(())).expect("ok");
        assert_eq!(done.removed, vec![old.clone()]);
        assert!(!old.exists());
        assert!(std::fs::read_to_string(&kept)
            .expect("blog")
            .contains("proxy_pass"));
        assert_eq!(std::fs::read_to_string(&keep).expect("other"), "not ours");
    }
}
