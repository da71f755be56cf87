//! `fleetgate`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use clap::{Parser, Subcommand};
use fleetgate::cli::{declarative, resources, transfer};
use fleetgate::config::{Config, Overrides};
use fleetgate::{init_logging, open_store, shutdown_signal, start, BootstrapSecrets};
use fleetgate_store::Store;

// mimalloc: the gateway allocates per request, and the system allocator was a
// quarter of its instructions per request under load. The `system-allocator`
// feature builds with the system allocator instead, so that heap profilers that
// hook malloc (heaptrack, valgrind's dhat and massif) see every allocation.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc hands memory freed back to its arenas to the OS only after a delay
/// (`purge_delay`, 1 s in mimalloc 3), and only when a later free runs the purge:
/// what a configuration change or a burst of connections frees just before the
/// process goes quiet stays resident until the next burst. 0 purges at once; the
/// cost is madvise calls, measured at ~17 a second under the keep-alive benchmark
/// and ~0.2 per request when every request opens a new connection (BENCHMARKS.md,
/// "Memory").
#[cfg(not(feature = "system-allocator"))]
#[allow(unsafe_code)]
fn configure_allocator() {
    extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    /// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` as bundled by
    /// libmimalloc-sys 0.1.49, which declares no constant for it: check it when
    /// that crate is updated.
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    // An operator's own MIMALLOC_PURGE_DELAY (read by mimalloc itself) is kept:
    // a longer delay trades resident memory for fewer page faults.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set only stores a value in mimalloc's option table; it
    // runs first thing in `main`, before any other thread exists.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

#[cfg(feature = "system-allocator")]
fn configure_allocator() {}

#[derive(Parser)]
#[command(
    name = "fleetgate",
    version,
    about = "API gateway and edge fleet control plane in one binary"
)]
struct Cli {
    /// TOML configuration file (also FLEETGATE_CONFIG).
    #[arg(long, global = true, value_name = "FILE", env = "FLEETGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manager and built-in gateway on one host (SQLite by default, no services needed).
    Serve(#[command(flatten)] Overrides),
    /// Manager only (several replicas may share one PostgreSQL).
    Manager(#[command(flatten)] Overrides),
    /// Gateway only, no store or admin API: configured by a Fleetgate manager
    /// (--manager wss://host:3443 --token <registration token>) and/or serving the
    /// redirects and pages of a Flecto-compatible manager's project (--flecto-url,
    /// -namespace, -project, -token).
    Edge(#[command(flatten)] Overrides),
    /// Tunnel relay: a QUIC server (--relay-listen, default 0.0.0.0:4433) joining
    /// the tunnel ends of edges, managed by a Fleetgate manager like an edge
    /// (--manager wss://host:3443 --token <registration token>) or, without one,
    /// accepting any tunnel.
    Relay(#[command(flatten)] Overrides),
    /// Apply the store's migrations and exit.
    Migrate(#[command(flatten)] Overrides),
    /// Configuration file commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Export what this host serves for other software.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// Routes of a running manager (--manager URL, key in FLEETGATE_TOKEN).
    Routes {
        #[command(subcommand)]
        command: resources::RoutesCommand,
    },
    /// Upstreams of a running manager.
    Upstreams {
        #[command(subcommand)]
        command: resources::UpstreamsCommand,
    },
    /// Configuration revisions of a running manager.
    Revisions {
        #[command(subcommand)]
        command: resources::RevisionsCommand,
    },
    /// Events of a running manager.
    Events {
        #[command(subcommand)]
        command: resources::EventsCommand,
    },
    /// Redirect rules of a running manager's projects.
    Redirects {
        #[command(subcommand)]
        command: transfer::RedirectsCommand,
    },
    /// Make a backup of a running manager's store and download it.
    Backup(transfer::Backup),
    /// Print the version, the commit it was built from and the build profile.
    Version,
    /// Print a shell completion script (bash: `source <(fleetgate completions
    /// bash)`; zsh: into a directory of `$fpath` as `_fleetgate`; fish: into
    /// `~/.config/fish/completions/fleetgate.fish`).
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the manual page (roff: `fleetgate man | man -l -`).
    Man,
    /// Ask this host's manager whether it is ready (`GET /health/ready` on
    /// `manager.listen`, a wildcard address asked on loopback): exit 0 when
    /// it is, 1 otherwise; for container health checks.
    Healthcheck {
        #[command(flatten)]
        flags: Overrides,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print it in effect, secrets redacted.
    Check(#[command(flatten)] Overrides),
    /// Print a running manager's configuration as a fleet file (YAML or JSON):
    /// settings, upstreams, routes and certificates by reference.
    Dump(declarative::DumpArgs),
    /// Compare a fleet file with a running manager's configuration: exit 0
    /// when they match, 2 when they differ (the differences printed).
    Diff(declarative::DiffArgs),
    /// Make a running manager's configuration what a fleet file says, as one
    /// revision (all or nothing; none when nothing changes).
    Apply(declarative::ApplyArgs),
}

#[derive(Subcommand)]
enum ExportCommand {
    /// One nginx vhost file per deployment with domains (fleetgate-<name>.conf in
    /// --dir), checked with `nginx -t`; if nginx refuses them, the files that were
    /// there before are put back.
    Nginx(NginxExport),
}

#[derive(clap::Args)]
struct NginxExport {
    #[command(flatten)]
    flags: Overrides,
    /// nginx's include directory for vhosts.
    #[arg(long, default_value = "/etc/nginx/conf.d")]
    dir: PathBuf,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// Arguments given to `nginx -t` after `-t` (e.g. `-c /etc/nginx/nginx.conf`);
    /// repeat for several.
    #[arg(long = "nginx-arg", allow_hyphen_values = true)]
    nginx_args: Vec<String>,
    /// Run `nginx -s reload` after a successful check.
    #[arg(long)]
    reload: bool,
}

async fn export_nginx(file: &Option<PathBuf>, x: NginxExport) -> Result<(), ExitCode> {
    let config = load(file, &x.flags)?;
    let deployments =
        fleetgate_manager::deployments::Deployments::new(&config.data_dir, &config.docker.socket);
    let vhosts = fleetgate_manager::nginx_export::vhosts(&deployments)
        .await
        .map_err(|e| fail(anyhow::anyhow!(e)))?;
    let mut check = || fleetgate_manager::nginx_export::nginx_test(&x.nginx, &x.nginx_args);
    let done = fleetgate_manager::nginx_export::write_checked(&x.dir, &vhosts, &mut check)
        .map_err(|e| fail(anyhow::anyhow!(e)))?;
    for p in &done.written {
        println!("wrote {}", p.display());
    }
    for p in &done.removed {
        println!("removed {}", p.display());
    }
    if x.reload {
        let out = std::process::Command::new(&x.nginx)
            .args(["-s", "reload"])
            .args(&x.nginx_args)
            .output()
            .map_err(|e| fail(anyhow::anyhow!("cannot run {}: {e}", x.nginx.display())))?;
        if !out.status.success() {
            return Err(fail(anyhow::anyhow!(
                "nginx -s reload failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        println!("nginx reloaded");
    }
    Ok(())
}

/// `fleetgate healthcheck`: the manager at `listen` answers `/health/ready`
/// with 200 within `timeout`.
async fn healthcheck(listen: std::net::SocketAddr, timeout: Duration) -> Result<(), ExitCode> {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let url = format!("http://{addr}/health/ready");
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| fail(anyhow::anyhow!("HTTP client: {e}")))?;
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => {
            println!("ready: {url}");
            Ok(())
        }
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            eprintln!("not ready: {url} answered {status}: {}", body.trim());
            Err(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("not ready: {url}: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn load(cli_config: &Option<PathBuf>, flags: &Overrides) -> Result<Config, ExitCode> {
    Config::load(cli_config.as_deref(), std::env::vars(), flags).map_err(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

async fn run(cli: Cli) -> Result<(), ExitCode> {
    match cli.command {
        Command::Version => {
            println!(
                "fleetgate {} (commit {}, {} build)",
                env!("CARGO_PKG_VERSION"),
                env!("FLEETGATE_COMMIT"),
                env!("FLEETGATE_PROFILE")
            );
            Ok(())
        }
        Command::Completions { shell } => {
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "fleetgate", &mut std::io::stdout());
            Ok(())
        }
        Command::Healthcheck {
            flags,
            timeout_secs,
        } => {
            let config = load(&cli.config, &flags)?;
            healthcheck(config.manager.listen, Duration::from_secs(timeout_secs)).await
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| fail(anyhow::anyhow!("cannot render the manual page: {e}")))?;
            use std::io::Write;
            std::io::stdout()
                .write_all(&out)
                .map_err(|e| fail(anyhow::anyhow!("cannot write the manual page: {e}")))?;
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check(flags),
        } => {
            let config = load(&cli.config, &flags)?;
            println!("# configuration is valid\n{}", config.redacted_toml());
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Dump(a),
        } => remote(declarative::dump(a).await),
        Command::Config {
            command: ConfigCommand::Diff(a),
        } => remote(declarative::diff_cmd(a).await),
        Command::Config {
            command: ConfigCommand::Apply(a),
        } => remote(declarative::apply(a).await),
        Command::Routes { command } => remote(resources::routes(command).await),
        Command::Upstreams { command } => remote(resources::upstreams(command).await),
        Command::Revisions { command } => remote(resources::revisions(command).await),
        Command::Events { command } => remote(resources::events(command).await),
        Command::Redirects { command } => remote(transfer::redirects(command).await),
        Command::Backup(b) => remote(transfer::backup(b).await),
        Command::Export {
            command: ExportCommand::Nginx(x),
        } => export_nginx(&cli.config, x).await,
        Command::Migrate(flags) => {
            let config = load(&cli.config, &flags)?;
            init_logging(&config);
            let store = open_store(&config).await.map_err(fail)?;
            let status = store.migration_status().await.map_err(|e| fail(e.into()))?;
            println!("migrations applied: {:?}", status.applied);
            store.close().await;
            Ok(())
        }
        Command::Serve(flags) => serve(&cli.config, &flags, true).await,
        Command::Manager(flags) => serve(&cli.config, &flags, false).await,
        Command::Edge(flags) => {
            let config = load(&cli.config, &flags)?;
            init_logging(&config);
            let running = fleetgate::start_edge(config, shutdown_signal())
                .await
                .map_err(|e| {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                })?;
            running.wait().await.map_err(fail)
        }
        Command::Relay(flags) => {
            let config = load(&cli.config, &flags)?;
            init_logging(&config);
            let running = fleetgate::start_relay(config, shutdown_signal())
                .await
                .map_err(|e| {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                })?;
            running.wait().await.map_err(fail)
        }
    }
}

async fn serve(
    file: &Option<PathBuf>,
    flags: &Overrides,
    with_gateway: bool,
) -> Result<(), ExitCode> {
    let config = load(file, flags)?;
    init_logging(&config);
    let running = start(
        config,
        BootstrapSecrets::from_env(),
        with_gateway,
        shutdown_signal(),
    )
    .await
    .map_err(fail)?;
    running.wait().await.map_err(fail)
}

/// The outcome of a command against a running manager: its own exit code, or
/// 1 with the error printed.
fn remote(r: anyhow::Result<ExitCode>) -> Result<(), ExitCode> {
    match r {
        Ok(code) if code == ExitCode::SUCCESS => Ok(()),
        Ok(code) => Err(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    tracing::error!("{e:#}");
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    configure_allocator();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
