//! Commands that talk to a running server: `table`, `review`, `audit`, `embed`.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::Value;
use std::path::PathBuf;

/// Where the server is and who is asking.
#[derive(Args, Clone)]
pub struct Remote {
    /// The server's HTTP address.
    #[arg(long, env = "MILKGLASS_SERVER", default_value = "http://127.0.0.1:7700", global = true)]
    server: String,
    /// Your token (from `milkglass user add`).
    #[arg(long, env = "MILKGLASS_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
pub enum TableCommand {
    /// Publish a CSV, Parquet or Arrow file as a guarded table (replaces one you own).
    Upload {
        file: PathBuf,
        #[arg(long)]
        name: String,
        /// The policy, as a JSON file.
        #[arg(long)]
        policy: PathBuf,
        /// Only these scientists may query it (comma-separated); default: every scientist.
        #[arg(long)]
        readers: Option<String>,
    },
    /// List the tables you may query.
    List,
    /// Drop a table you own.
    Drop { name: String },
}

#[derive(Subcommand)]
pub enum ReviewCommand {
    /// Held queries waiting for your decision.
    List {
        /// Show requests in every state, not only pending ones.
        #[arg(long)]
        all: bool,
    },
    /// Release a held query's result to its requester (once).
    Approve { id: i64 },
    /// Refuse a held query.
    Reject {
        id: i64,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    /// Only entries about this table.
    #[arg(long)]
    table: Option<String>,
    /// Print the entries as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain in a data directory; names the first broken entry.
    Verify {
        #[arg(long, env = "MILKGLASS_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}

#[derive(Args)]
pub struct EmbedArgs {
    pub project: String,
    pub dataset: String,
    /// Embed whole frames only, not the crops of their label boxes.
    #[arg(long)]
    pub no_crops: bool,
    /// Frames read and embedded together.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

impl Remote {
    fn request(&self, method: reqwest::Method, path: &str) -> Result<RequestBuilder> {
        let token = self.token.as_deref().context("no token: pass --token or set MILKGLASS_TOKEN")?;
        let client = Client::builder().timeout(std::time::Duration::from_secs(600)).build()?;
        Ok(client.request(method, format!("{}{path}", self.server.trim_end_matches('/'))).bearer_auth(token))
    }

    fn send(&self, request: RequestBuilder) -> Result<Value> {
        let response: Response =
            request.send().with_context(|| format!("cannot reach the server at {}", self.server))?;
        let status = response.status();
        let body: Value = response.json().unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("no details");
            match body["error"]["field"].as_str() {
                Some(field) if !field.is_empty() => bail!("{status}: {field}: {message}"),
                _ => bail!("{status}: {message}"),
            }
        }
        Ok(body)
    }
}

pub fn table(remote: &Remote, command: TableCommand) -> Result<()> {
    match command {
        TableCommand::Upload { file, name, policy, readers } => {
            let policy =
                std::fs::read_to_string(&policy).with_context(|| format!("cannot read {}", policy.display()))?;
            let file_name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let part = reqwest::blocking::multipart::Part::file(&file)
                .with_context(|| format!("cannot read {}", file.display()))?
                .file_name(file_name);
            let mut form =
                reqwest::blocking::multipart::Form::new().text("name", name).text("policy", policy).part("file", part);
            if let Some(readers) = readers {
                form = form.text("readers", readers);
            }
            let table = remote.send(remote.request(reqwest::Method::POST, "/api/tables")?.multipart(form))?;
            println!("published table {} ({} rows, columns: {})", table["name"], table["rows"], table["columns"]);
        }
        TableCommand::List => {
            let tables = remote.send(remote.request(reqwest::Method::GET, "/api/tables")?)?;
            for t in tables["tables"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:>10} rows  owner {}",
                    t["name"].as_str().unwrap_or("?"),
                    t["rows"],
                    t["owner"].as_str().unwrap_or("?")
                );
            }
        }
        TableCommand::Drop { name } => {
            remote.send(remote.request(reqwest::Method::DELETE, &format!("/api/tables/{name}"))?)?;
            println!("dropped table {name:?}");
        }
    }
    Ok(())
}

pub fn review(remote: &Remote, command: ReviewCommand) -> Result<()> {
    match command {
        ReviewCommand::List { all } => {
            let path = if all { "/api/reviews" } else { "/api/reviews?state=pending" };
            let requests = remote.send(remote.request(reqwest::Method::GET, path)?)?;
            let list = requests["requests"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no requests");
            }
            for r in list {
                println!(
                    "#{} [{}] {} asks: {}\n    why held: {}",
                    r["id"],
                    r["state"].as_str().unwrap_or("?"),
                    r["user"].as_str().unwrap_or("?"),
                    r["query"].as_str().unwrap_or("?"),
                    r["reason"].as_str().unwrap_or("?")
                );
            }
        }
        ReviewCommand::Approve { id } => {
            remote.send(remote.request(reqwest::Method::POST, &format!("/api/reviews/{id}/approve"))?)?;
            println!("approved request {id}: its result is released once, to its requester");
        }
        ReviewCommand::Reject { id, reason } => {
            let body = serde_json::json!({ "reason": reason });
            remote.send(remote.request(reqwest::Method::POST, &format!("/api/reviews/{id}/reject"))?.json(&body))?;
            println!("rejected request {id}");
        }
    }
    Ok(())
}

pub fn audit(remote: &Remote, args: AuditArgs) -> Result<()> {
    if let Some(AuditCommand::Verify { data_dir }) = args.command {
        return match crate::open_store(&data_dir)?.verify_audit()? {
            Ok(n) => {
                println!("audit log intact: {n} entries, hash chain verified");
                Ok(())
            }
            Err(id) => bail!("audit log broken at entry {id}: it, or an entry before it, was changed or removed"),
        };
    }
    let path = match &args.table {
        Some(t) => format!("/api/audit?table={t}"),
        None => "/api/audit".to_string(),
    };
    let entries = remote.send(remote.request(reqwest::Method::GET, &path)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries["entries"])?);
        return Ok(());
    }
    for e in entries["entries"].as_array().into_iter().flatten() {
        println!(
            "{} {:<10} {:<9} rows={} smallest={} {}{}",
            e["at"].as_str().unwrap_or("?"),
            e["user"].as_str().unwrap_or("?"),
            e["decision"].as_str().unwrap_or("?"),
            e["rows_returned"],
            e["smallest_group"],
            e["query"].as_str().unwrap_or("?"),
            e["reason"].as_str().map(|r| format!("\n    {r}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Starts embedding generation on the server and follows its job with a progress bar.
pub fn embed(remote: &Remote, args: EmbedArgs) -> Result<()> {
    let segment = milkglass_files::encode_segment;
    let dataset = format!("/api/projects/{}/datasets/{}", segment(&args.project), segment(&args.dataset));
    let body = serde_json::json!({ "crops": !args.no_crops, "batch": args.batch });
    let started = remote.send(remote.request(reqwest::Method::POST, &format!("{dataset}/embed"))?.json(&body))?;
    let job = started["job"].as_i64().context("the server did not name the job")?;
    let bar = indicatif::ProgressBar::new(started["total"].as_u64().unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} embedding [{bar:40}] {pos}/{len} frames {per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let status = remote.send(remote.request(reqwest::Method::GET, &format!("{dataset}/status"))?)?;
        let Some(state) = status["jobs"].as_array().into_iter().flatten().find(|j| j["id"].as_i64() == Some(job))
        else {
            bail!("job {job} is no longer listed in the dataset status");
        };
        bar.set_position(state["progress"].as_u64().unwrap_or(0));
        let message = state["message"].as_str().unwrap_or("").to_string();
        match state["state"].as_str() {
            Some("done") => {
                bar.finish_and_clear();
                println!("{message}");
                return Ok(());
            }
            Some("failed") | Some("interrupted") => {
                bar.abandon();
                bail!("embedding failed: {message}");
            }
            _ => {}
        }
    }
}
