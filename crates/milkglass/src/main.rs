//! `milkglass`: one binary for the server, the demo and administration.

mod bench;
mod demo;
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
    Serve(ServeArgs),
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
            };
            milkglass_server::check_fetch_allow(&config.fetch_allow)
                .map_err(|e| anyhow::anyhow!("--fetch-allow: {e}"))?;
            let listener = bind(args.http_addr)?;
            let flight = bind(args.flight_addr)?;
            let config = ServerConfig { flight_url: Some(format!("grpc://{}", flight.local_addr()?)), ..config };
            // Made before anything is announced, so an unusable asset store stops the start.
            let state = AppState::new(store, config).map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
            println!(
                "milkglass serving {} on http://{} (Flight SQL on grpc://{})",
                args.data_dir.display(),
                listener.local_addr()?,
                flight.local_addr()?
            );
            runtime()?.block_on(serve(state, listener, flight))
        }
        Command::Demo(args) => demo::run(args),
        Command::User { command } => user(command),
        Command::Table { command, remote } => remote::table(&remote, command),
        Command::Review { command, remote } => remote::review(&remote, command),
        Command::Audit { args, remote } => remote::audit(&remote, args),
        Command::Embed { args, remote } => remote::embed(&remote, args),
        Command::ServeFiles(args) => serve_files(args),
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
async fn serve(state: AppState, http: std::net::TcpListener, flight: std::net::TcpListener) -> Result<()> {
    let http = tokio::net::TcpListener::from_std(http)?;
    let flight = tokio::net::TcpListener::from_std(flight)?;
    milkglass_server::serve_all(http, Some(flight), state, shutdown_signal()).await?;
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
            let token = open_store(&data_dir)?.new_token(&name)?.token;
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
