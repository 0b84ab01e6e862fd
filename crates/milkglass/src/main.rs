//! `milkglass`: one binary for the server, the demo and administration.

mod bench;
mod demo;
mod load;
mod remote;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use milkglass_core::Role;
use milkglass_server::{AppState, ServerConfig};
use milkglass_store::Store;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Uploads decode on one thread and free on another; glibc's allocator handles that
/// poorly (a fifth of ingest time went to malloc and free), mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "milkglass", version, about = "See the shape of data without seeing the people in it.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API over a data directory.
    Serve(Box<ServeArgs>),
    /// Create a fresh data directory with sample data and serve it.
    Demo(DemoArgs),
    /// Manage users and their tokens (works on the data directory directly).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Publish and manage guarded tables (talks to a server).
    Table {
        #[command(subcommand)]
        command: remote::TableCommand,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Decide on queries held for review (talks to a server).
    Review {
        #[command(subcommand)]
        command: remote::ReviewCommand,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Read the audit log (talks to a server), or verify its hash chain (`audit verify`).
    Audit {
        #[command(flatten)]
        args: remote::AuditArgs,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Generate frame and crop embeddings on the server with the pretrained model, with a progress bar.
    Embed {
        #[command(flatten)]
        args: remote::EmbedArgs,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Serve a local directory to the browser (CORS, Range requests), for data URLs in experiments.
    ServeFiles(ServeFilesArgs),
    /// TLS certificates for `serve --tls-cert/--tls-key`.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Back a data directory up into a new directory, online: uploads and queries go on meanwhile.
    Backup {
        /// Where the backup goes (a new or empty directory).
        dest: PathBuf,
        /// The data directory to back up.
        #[arg(long, env = "MILKGLASS_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Restore a backup into a new data directory, checking every file, the counts and the audit chain.
    Restore {
        /// The backup (a directory made by `milkglass backup`).
        backup: PathBuf,
        /// The data directory to create (must not exist, or be empty).
        #[arg(long, env = "MILKGLASS_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// The key that seals the catalog's secrets (works on the data directory directly).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Measure milkglass against a reference, on this machine.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

/// Flags shared by every command that starts a server.
#[derive(Args, Clone)]
struct ServeArgs {
    /// The data directory (created if missing).
    #[arg(long, env = "MILKGLASS_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7700")]
    http_addr: SocketAddr,
    /// Address of the Arrow Flight SQL service.
    #[arg(long, default_value = "127.0.0.1:7701")]
    flight_addr: SocketAddr,
    /// Largest accepted upload body, in bytes.
    #[arg(long, default_value_t = 16 << 30)]
    max_upload_bytes: u64,
    /// Largest accepted JSON request body (everything but uploads), in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_json_bytes: usize,
    /// Records per atomic batch in uploads.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch_size: u32,
    /// Seconds a held query waits for the owner's review before answering with its request id.
    #[arg(long, default_value_t = 60)]
    review_wait_secs: u64,
    /// Private ranges or hosts the fetcher may reach anyway (e.g. 10.1.0.0/16,images.internal).
    /// Loopback, link-local and private addresses are refused unless listed here.
    #[arg(long, env = "MILKGLASS_FETCH_ALLOW", value_delimiter = ',')]
    fetch_allow: Vec<String>,
    /// Where hosted and mirrored files live: s3://BUCKET[/PREFIX] on S3-compatible storage, with
    /// credentials, region and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION
    /// and AWS_ENDPOINT_URL. Default: DATA_DIR/assets.
    #[arg(long, env = "MILKGLASS_ASSET_STORE")]
    asset_store: Option<String>,
    /// Memory one guarded query may use, in MiB (joins and sorts spill or stop past it).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(16..))]
    query_memory_mib: u64,
    /// Seconds one guarded query may run before it is cancelled.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    query_timeout_secs: u64,
    /// Guarded queries one user may run at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    queries_per_user: u64,
    /// Guarded queries the server runs at once, all users together.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    queries_total: u64,
    /// Failed sign-ins (wrong or revoked tokens) one address may make in a minute; past them it is
    /// refused, right tokens too, until the minute ends. Each failure is audited.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    failed_sign_ins_per_minute: u32,
    /// Threads that prepare each new dataset version after its upload (counts, filter index, map,
    /// similarity index, SQL tables). They run below requests' priority, and a burst of uploads
    /// to one dataset costs one preparation of its newest version.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    preparation_workers: u64,
    /// Single sign-on for the web app: the OpenID Connect provider's issuer URL (Okta, Entra ID,
    /// Keycloak, Google...). Users are created on their first sign-in, with the role --oidc-role maps.
    #[arg(long, env = "MILKGLASS_OIDC_ISSUER", requires = "oidc_client_id")]
    oidc_issuer: Option<String>,
    /// The client id registered with the provider.
    #[arg(long, env = "MILKGLASS_OIDC_CLIENT_ID")]
    oidc_client_id: Option<String>,
    /// The client secret, if the provider gave one (better given as MILKGLASS_OIDC_CLIENT_SECRET).
    #[arg(long, env = "MILKGLASS_OIDC_CLIENT_SECRET", hide_env_values = true)]
    oidc_client_secret: Option<String>,
    /// This server's URL as browsers reach it; register PUBLIC_URL/auth/oidc/callback with the
    /// provider. Default: http(s)://HTTP_ADDR.
    #[arg(long, env = "MILKGLASS_PUBLIC_URL")]
    public_url: Option<String>,
    /// The claim whose values --oidc-role maps (a list of groups, or one string).
    #[arg(long, default_value = "groups")]
    oidc_role_claim: String,
    /// VALUE=ROLE: users whose role claim holds VALUE get ROLE (the strongest wins), e.g.
    /// --oidc-role ml-admins=admin,data-owners=owner,ml=scientist.
    #[arg(long, value_delimiter = ',', value_parser = parse_role_rule)]
    oidc_role: Vec<(String, Role)>,
    /// The role of users no --oidc-role matches; without it, they may not sign in.
    #[arg(long, value_parser = parse_role)]
    oidc_default_role: Option<Role>,
    /// How long a web sign-in lasts, in hours.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=720))]
    oidc_session_hours: u64,
    /// PEM certificate chain: the HTTP API and Flight SQL then speak only TLS (reloaded on SIGHUP).
    /// `milkglass tls self-signed` makes one for a first try.
    #[arg(long, env = "MILKGLASS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "MILKGLASS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Write a self-signed certificate and its key (cert.pem, key.pem) for a first try; clients must
    /// be told to trust this certificate (curl --cacert, requests' verify=, ADBC's tls_root_certs).
    SelfSigned {
        /// Directory to write cert.pem and key.pem into (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Host names and IP addresses the certificate is for.
        #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Seal every stored secret (fetch headers, S3 credentials) under a new key; the old key is kept
    /// as catalog-secrets.key.previous until the next rotation. Safe while a server runs.
    Rotate {
        /// The data directory.
        #[arg(long, env = "MILKGLASS_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}

#[derive(Args)]
struct ServeFilesArgs {
    /// The directory whose files are served at their relative paths.
    dir: PathBuf,
    #[arg(long, default_value_t = 5000)]
    port: u16,
    /// Address to listen on; the default keeps the files on this machine.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
}

#[derive(Args)]
struct DemoArgs {
    /// Where to create the demo's data directory. An earlier demo directory there is replaced.
    #[arg(long, default_value = "./milkglass-demo")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7700")]
    http_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:7701")]
    flight_addr: SocketAddr,
    /// Number of sample frames to generate.
    #[arg(long, default_value_t = 300)]
    frames: usize,
    /// Load the sample data, print the tokens, and exit without serving.
    #[arg(long)]
    no_serve: bool,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user and print its token (shown only once).
    Add {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long, env = "MILKGLASS_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// List users.
    List {
        #[arg(long, env = "MILKGLASS_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Revoke a user and all of its tokens.
    Revoke {
        name: String,
        #[arg(long, env = "MILKGLASS_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Issue another token for an existing user.
    Token {
        name: String,
        #[arg(long, env = "MILKGLASS_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Put a scientist in a pool of analysts who may share results: the guard compares
    /// each answer with every earlier answer of the pool (differencing). Without POOL,
    /// the user is a pool of one again.
    Pool {
        name: String,
        pool: Option<String>,
        #[arg(long, env = "MILKGLASS_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MILKGLASS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let store = open_store(&args.data_dir)?;
            let config = ServerConfig {
                max_upload_bytes: args.max_upload_bytes,
                max_json_bytes: args.max_json_bytes,
                batch_size: args.batch_size as usize,
                sample_dir: None,
                review_wait: std::time::Duration::from_secs(args.review_wait_secs),
                flight_url: None,
                fetch_allow: args.fetch_allow.clone(),
                asset_store: args.asset_store.clone(),
                queries: milkglass_server::QueryLimits {
                    each: milkglass_guard::Limits {
                        memory_bytes: (args.query_memory_mib as usize) << 20,
                        time: std::time::Duration::from_secs(args.query_timeout_secs),
                    },
                    per_user: args.queries_per_user as usize,
                    total: args.queries_total as usize,
                },
                sign_ins: milkglass_server::SignInLimits {
                    failures: args.failed_sign_ins_per_minute,
                    window: std::time::Duration::from_secs(60),
                },
                preparation_workers: args.preparation_workers as usize,
            };
            milkglass_server::check_fetch_allow(&config.fetch_allow)
                .map_err(|e| anyhow::anyhow!("--fetch-allow: {e}"))?;
            let tls = match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => {
                    Some(milkglass_server::TlsCerts::load(cert, key).map_err(anyhow::Error::msg)?)
                }
                _ => None,
            };
            let (http_scheme, grpc_scheme) = if tls.is_some() { ("https", "grpc+tls") } else { ("http", "grpc") };
            let listener = bind(args.http_addr)?;
            let flight = bind(args.flight_addr)?;
            let config =
                ServerConfig { flight_url: Some(format!("{grpc_scheme}://{}", flight.local_addr()?)), ..config };
            // Made before anything is announced, so an unusable asset store stops the start.
            let mut state = AppState::new(store, config).map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
            let runtime = runtime()?;
            if let Some(issuer) = &args.oidc_issuer {
                let settings = milkglass_server::OidcSettings {
                    issuer: issuer.clone(),
                    client_id: args.oidc_client_id.clone().unwrap_or_default(),
                    client_secret: args.oidc_client_secret.clone(),
                    public_url: args
                        .public_url
                        .clone()
                        .unwrap_or_else(|| format!("{http_scheme}://{}", listener.local_addr().expect("bound"))),
                    mapping: milkglass_service::sso::RoleMapping {
                        claim: args.oidc_role_claim.clone(),
                        rules: args.oidc_role.clone(),
                        default: args.oidc_default_role,
                    },
                    session: std::time::Duration::from_secs(args.oidc_session_hours * 3600),
                };
                let oidc = runtime.block_on(milkglass_server::Oidc::discover(settings)).map_err(anyhow::Error::msg)?;
                state = state.with_oidc(oidc);
            }
            println!(
                "milkglass serving {} on {http_scheme}://{} (Flight SQL on {grpc_scheme}://{})",
                args.data_dir.display(),
                listener.local_addr()?,
                flight.local_addr()?
            );
            runtime.block_on(serve(state, listener, flight, tls))
        }
        Command::Tls { command: TlsCommand::SelfSigned { out, names } } => self_signed(&out, &names),
        Command::Demo(args) => demo::run(args),
        Command::User { command } => user(command),
        Command::Table { command, remote } => remote::table(&remote, command),
        Command::Review { command, remote } => remote::review(&remote, command),
        Command::Audit { args, remote } => remote::audit(&remote, args),
        Command::Embed { args, remote } => remote::embed(&remote, args),
        Command::ServeFiles(args) => serve_files(args),
        Command::Backup { dest, data_dir } => {
            let bar = ByteProgress::new("backing up");
            let manifest = open_store(&data_dir)?.backup_to(&dest, &bar).context("backing up")?;
            bar.0.finish_and_clear();
            println!(
                "backed up {} files ({} frames, {} audit entries) into {}",
                manifest.files.len(),
                manifest.counts["frames"],
                manifest.counts["audit_log"],
                dest.display()
            );
            Ok(())
        }
        Command::Restore { backup, data_dir } => {
            let bar = ByteProgress::new("restoring");
            let manifest = milkglass_store::backup::restore(&backup, &data_dir, &bar).context("restoring")?;
            bar.0.finish_and_clear();
            println!(
                "restored {} files ({} frames, {} audit entries, chain verified) into {}",
                manifest.files.len(),
                manifest.counts["frames"],
                manifest.counts["audit_log"],
                data_dir.display()
            );
            Ok(())
        }
        Command::Secrets { command: SecretsCommand::Rotate { data_dir } } => {
            let rotation = open_store(&data_dir)?.rotate_secrets_key().context("rotating the secrets key")?;
            println!("sealed {} stored secrets under the new key {}", rotation.values, rotation.key_id);
            Ok(())
        }
        Command::Bench { command } => bench::run(command),
    }
}

fn serve_files(args: ServeFilesArgs) -> Result<()> {
    let root = milkglass_files::FileRoot::new(&args.dir)
        .with_context(|| format!("cannot serve {}: not a readable directory", args.dir.display()))?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr}; is something else using it? choose another with --port"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    println!("serving {} on http://{local}/", root.path().display());
    println!("use URLs like http://{local}/<path relative to the directory> in frame data");
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        milkglass_files::serve(listener, root, shutdown_signal()).await?;
        Ok(())
    })
}

/// A progress bar in bytes for backups and restores.
struct ByteProgress(indicatif::ProgressBar);

impl ByteProgress {
    fn new(what: &str) -> ByteProgress {
        let bar = indicatif::ProgressBar::new(0).with_message(what.to_string());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        ByteProgress(bar)
    }
}

impl milkglass_store::backup::Progress for ByteProgress {
    fn files(&self, total_bytes: u64) {
        self.0.set_length(total_bytes);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

/// `VALUE=ROLE`, as --oidc-role takes it.
fn parse_role_rule(text: &str) -> std::result::Result<(String, Role), String> {
    let (value, role) = text.split_once('=').ok_or_else(|| format!("{text:?} is not VALUE=ROLE"))?;
    if value.is_empty() {
        return Err(format!("{text:?} names no claim value before '='"));
    }
    Ok((value.to_string(), parse_role(role)?))
}

fn open_store(dir: &std::path::Path) -> Result<Store> {
    Store::open(dir).with_context(|| format!("cannot open the data directory {}", dir.display()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Binds the HTTP address, with an error that says what to do when it is taken.
fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("cannot listen on {addr}; is another server running there? choose another with --http-addr")
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves HTTP and Flight SQL on bound listeners until Ctrl-C or SIGTERM.
async fn serve(
    state: AppState,
    http: std::net::TcpListener,
    flight: std::net::TcpListener,
    tls: Option<std::sync::Arc<milkglass_server::TlsCerts>>,
) -> Result<()> {
    let http = tokio::net::TcpListener::from_std(http)?;
    let flight = tokio::net::TcpListener::from_std(flight)?;
    #[cfg(unix)]
    if let Some(certs) = tls.clone() {
        // A renewed certificate is read on SIGHUP and served to new connections; one that does not
        // load leaves the working one in place.
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match certs.reload() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(e) => tracing::error!("TLS certificate not reloaded, the previous one stays: {e}"),
                }
            }
        });
    }
    milkglass_server::serve_all(http, Some(flight), state, tls, shutdown_signal()).await?;
    Ok(())
}

/// `milkglass tls self-signed`: cert.pem and key.pem (mode 0600) in `out`.
fn self_signed(out: &std::path::Path, names: &[String]) -> Result<()> {
    let (cert, key) = milkglass_server::self_signed(names).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (cert_path, key_path) = (out.join("cert.pem"), out.join("key.pem"));
    std::fs::write(&cert_path, cert).with_context(|| format!("cannot write {}", cert_path.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(
        &mut options.open(&key_path).with_context(|| format!("cannot write {}", key_path.display()))?,
        key.as_bytes(),
    )?;
    println!("wrote {} and {} for {}", cert_path.display(), key_path.display(), names.join(", "));
    println!("serve with: milkglass serve --tls-cert {} --tls-key {}", cert_path.display(), key_path.display());
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn user(command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Add { name, role, data_dir } => {
            let token = open_store(&data_dir)?.add_user(&name, role)?;
            println!("added {role} {name:?}; token (shown only once):\n{token}");
        }
        UserCommand::List { data_dir } => {
            let users = open_store(&data_dir)?.list_users()?;
            if users.is_empty() {
                println!("no users yet; add one with: milkglass user add NAME --role admin");
            }
            for u in users {
                let state =
                    if u.revoked { "revoked".to_string() } else { format!("{} active token(s)", u.active_tokens) };
                println!("{:<24} {:<10} {state}", u.name, u.role.as_str());
            }
        }
        UserCommand::Revoke { name, data_dir } => {
            open_store(&data_dir)?.revoke_user(&name)?;
            println!("revoked {name:?} and all of its tokens");
        }
        UserCommand::Token { name, data_dir } => {
            let token = open_store(&data_dir)?.new_token(&name, &Default::default())?.token;
            println!("new token for {name:?} (shown only once):\n{token}");
        }
        UserCommand::Pool { name, pool, data_dir } => {
            open_store(&data_dir)?.set_user_pool(&name, pool.as_deref())?;
            match pool {
                Some(pool) => {
                    println!("{name:?} now shares the differencing memory and group privacy budgets of pool {pool:?}")
                }
                None => println!("{name:?} is a pool of one again"),
            }
        }
    }
    Ok(())
}

/// Rejects data directories that obviously are not ours before anything is written.
fn check_not_foreign(dir: &std::path::Path, marker: &str) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() && !dir.join(marker).exists() {
        bail!("{} is not empty and is not a milkglass demo directory; choose another --data-dir", dir.display());
    }
    Ok(())
}
