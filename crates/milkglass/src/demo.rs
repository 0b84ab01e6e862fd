//! `milkglass demo`: a fresh data directory with sample data, served.

use crate::{DemoArgs, bind, check_not_foreign, open_store, runtime, serve};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use milkglass_core::{DatasetSpec, Policy, ProjectRole, ProjectSpec, Role};
use milkglass_sample::{DetectionConfig, TITANIC_CSV, detection_dataset, write_images};
use milkglass_server::{AppState, ServerConfig};
use milkglass_store::{Store, UploadKind};
use serde_json::json;
use std::path::Path;

/// Present in every directory `demo` made, so it may replace it and nothing else.
const MARKER: &str = ".milkglass-demo";
/// Tokens of the demo users, for scripts and tests (readable by the owner only).
pub const TOKENS_FILE: &str = "demo-tokens.json";

pub fn run(args: DemoArgs) -> Result<()> {
    let dir = &args.data_dir;
    check_not_foreign(dir, MARKER)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot replace the old demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(MARKER), "created by milkglass demo; `milkglass demo` may delete this directory\n")?;
    let store = open_store(dir)?;
    let tokens = add_users(&store)?;
    write_tokens(dir, &tokens)?;

    // Bind before loading, so the sample URLs carry the real port (also with port 0).
    let listener = bind(args.http_addr)?;
    let flight = bind(args.flight_addr)?;
    let addr = listener.local_addr()?;
    let flight_addr = flight.local_addr()?;
    let url_prefix = format!("http://{addr}/sample/shapes");
    load_shapes(&store, dir, args.frames, &url_prefix, &tokens)?;
    std::fs::write(dir.join("sample").join("titanic.csv"), TITANIC_CSV)?;

    println!("\nmilkglass demo in {}", dir.display());
    for (name, role, token) in &tokens {
        println!("  {name:<8} {role:<10} {token}");
    }
    println!("  (also in {})", dir.join(TOKENS_FILE).display());
    if args.no_serve {
        return Ok(());
    }
    let config = ServerConfig {
        sample_dir: Some(dir.join("sample")),
        flight_url: Some(format!("grpc://{flight_addr}")),
        ..ServerConfig::default()
    };
    let state = AppState::new(store, config).map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
    println!(
        "\nmilkglass serving {} on http://{addr} (Flight SQL on grpc://{flight_addr})  (Ctrl-C to stop)",
        dir.display()
    );
    println!("open http://{addr}/ in a browser and sign in with one of the tokens above (the web app)");
    println!(
        "or try: curl -H 'Authorization: Bearer {}' http://{addr}/api/projects/shapes/datasets/shapes/status",
        tokens[0].2
    );
    runtime()?.block_on(serve(state, listener, flight, None))
}

fn add_users(store: &Store) -> Result<Vec<(String, Role, String)>> {
    let users = [("admin", Role::Admin), ("olivia", Role::Owner), ("victor", Role::Viewer), ("sam", Role::Scientist)];
    users.into_iter().map(|(name, role)| Ok((name.to_string(), role, store.add_user(name, role)?))).collect()
}

fn write_tokens(dir: &Path, tokens: &[(String, Role, String)]) -> Result<()> {
    let body: serde_json::Map<String, serde_json::Value> =
        tokens.iter().map(|(name, role, token)| (name.clone(), json!({ "role": role, "token": token }))).collect();
    let path = dir.join(TOKENS_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&body)?)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// The drawn-shapes detection dataset: images, frames with labels and embeddings, a
/// model's inferences, and the record of injected label errors.
fn load_shapes(
    store: &Store,
    dir: &Path,
    frames: usize,
    url_prefix: &str,
    tokens: &[(String, Role, String)],
) -> Result<()> {
    let config = DetectionConfig { frames, ..DetectionConfig::default() };
    let sample = detection_dataset(&config, url_prefix);
    let images = dir.join("sample").join("shapes");
    let spinner = ProgressBar::new_spinner().with_message(format!("drawing {frames} sample images"));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    write_images(&config, &sample, &images)?;
    spinner.finish_with_message(format!("drew {frames} sample images"));
    std::fs::write(images.join("injected_errors.json"), serde_json::to_string_pretty(&sample.injected_errors)?)?;

    let owner = store.user_by_name(&tokens[1].0)?;
    let spec = ProjectSpec {
        name: "shapes".into(),
        classes: sample.classes.clone(),
        access_mode: Default::default(),
        metadata: json!({"description": "drawn shapes with injected label errors"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    let project = store.create_project(&spec, &owner)?;
    store.set_member(&project, &tokens[2].0, ProjectRole::Viewer)?;
    let dataset = store.create_dataset("shapes", &DatasetSpec { name: "shapes".into(), ..DatasetSpec::default() })?;
    let bar = progress(sample.frames.len() + sample.inferences.len(), "loading frames and inferences");
    let mut upload = store.begin_upload(&dataset, UploadKind::Frames, None)?;
    for chunk in sample.frames.chunks(1000) {
        store.write_frames(&mut upload, chunk)?;
        bar.inc(chunk.len() as u64);
    }
    store.finish_upload(&upload, None)?;
    let set =
        store.create_inference_set(&dataset, &DatasetSpec { name: "detector_v1".into(), ..DatasetSpec::default() })?;
    let mut upload = store.begin_upload(&dataset, UploadKind::Inferences, Some(&set))?;
    for chunk in sample.inferences.chunks(1000) {
        store.write_labels(&mut upload, chunk)?;
        bar.inc(chunk.len() as u64);
    }
    store.finish_upload(&upload, None)?;
    // The dataset's tables for outside analysts: counts over at least 5 frames, never an id or a URL.
    let policy = Policy::from_value(json!({
        "safe_zone": {"aggregation": {"min_agg_size": 5}},
        "unsafe_handling": "reject",
        "sanitized_columns": ["frame_id", "urls", "label_id", "matched_label_id", "inference_id", "other_label_id"],
    }))?;
    store.publish_dataset(&store.dataset("shapes", "shapes")?, &owner, &policy, None, None)?;
    bar.finish_with_message(format!(
        "loaded {} frames, {} inferences ({} injected label errors)",
        sample.frames.len(),
        sample.inferences.len(),
        sample.injected_errors.len()
    ));
    Ok(())
}

pub fn progress(total: usize, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64).with_message(message.to_string());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}
