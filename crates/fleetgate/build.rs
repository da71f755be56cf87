//! Records what `fleetgate version` prints besides the package version: the
//! commit the binary was built from (`FLEETGATE_COMMIT` when set, as a
//! packager without the repository may set it; else `git rev-parse`; else
//! "unknown"), with `+dirty` when the work tree had changes, and the build
//! profile.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=FLEETGATE_COMMIT");
    let commit = match std::env::var("FLEETGATE_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // Built again when the checked-out commit moves.
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                println!("cargo:rerun-if-changed={dir}/HEAD");
            }
            if let (Some(common), Some(head_ref)) = (
                git(&["rev-parse", "--git-common-dir"]),
                git(&["symbolic-ref", "-q", "HEAD"]),
            ) {
                println!("cargo:rerun-if-changed={common}/{head_ref}");
                println!("cargo:rerun-if-changed={common}/packed-refs");
            }
            match git(&["rev-parse", "--short=12", "HEAD"]) {
                Some(c) if !c.is_empty() => {
                    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                        .is_some_and(|s| !s.is_empty());
                    if dirty {
                        format!("{c}+dirty")
                    } else {
                        c
                    }
                }
                _ => "unknown".into(),
            }
        }
    };
    println!("cargo:rustc-env=FLEETGATE_COMMIT={commit}");
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=FLEETGATE_PROFILE={profile}");
}
