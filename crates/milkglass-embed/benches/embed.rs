//! Embedding throughput on this machine: frames (whole images) and crops (label boxes), images decoded,
//! resampled and embedded exactly as `milkglass embed` does. Not a test: run it with
//!
//! ```sh
//! cargo bench -p milkglass-embed --bench embed -- --images 256 --dir /tmp/embed-bench
//! python3 bench/embed_vs_onnxruntime.py            # runs this, then the same model in onnxruntime
//! ```
//!
//! With `--dir`, the images and their boxes are written there (PNG files and `boxes.json`) so a peer can
//! embed the very same inputs.

use milkglass_core::Geometry;
use milkglass_embed::{Embedder, ImageJob, Region, embed_images};
use milkglass_sample::{DetectionConfig, detection_dataset, render_png};
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let images: usize = arg("--images").map_or(256, |v| v.parse().expect("--images N"));
    let batch: usize = arg("--batch").map_or(32, |v| v.parse().expect("--batch N"));
    let threads: usize = arg("--threads").map_or(0, |v| v.parse().expect("--threads N"));
    let config = DetectionConfig { frames: images, width: 640, height: 480, ..Default::default() };
    let sample = detection_dataset(&config, "bench");
    let pngs: Vec<Vec<u8>> = (0..images).map(|i| render_png(&config, i)).collect();
    let boxes: Vec<Vec<Region>> = sample
        .frames
        .iter()
        .map(|f| {
            f.labels
                .iter()
                .flatten()
                .filter_map(|l| match l.geometry {
                    Geometry::Box2d { top, left, width, height } => Some(Region { left, top, width, height }),
                    _ => None,
                })
                .collect()
        })
        .collect();
    if let Some(dir) = arg("--dir") {
        std::fs::create_dir_all(&dir).expect("create --dir");
        for (i, png) in pngs.iter().enumerate() {
            std::fs::write(format!("{dir}/{i:06}.png"), png).expect("write image");
        }
        let json: Vec<Vec<[f64; 4]>> =
            boxes.iter().map(|b| b.iter().map(|r| [r.left, r.top, r.width, r.height]).collect()).collect();
        std::fs::write(format!("{dir}/boxes.json"), serde_json::to_vec(&json).unwrap()).expect("write boxes");
    }
    let mut embedder = Embedder::discover(threads).unwrap_or_else(|e| panic!("{e}"));
    // Warm up: the first runs allocate ONNX Runtime's arenas.
    let warm: Vec<ImageJob> = pngs.iter().take(batch).map(|b| ImageJob { bytes: b, crops: &[] }).collect();
    embed_images(&mut embedder, &warm, batch);

    let frames: Vec<ImageJob> = pngs.iter().map(|b| ImageJob { bytes: b, crops: &[] }).collect();
    let started = Instant::now();
    let done = embed_images(&mut embedder, &frames, batch);
    let frame_secs = started.elapsed().as_secs_f64();
    assert!(done.iter().all(|r| r.is_ok()));

    let with_crops: Vec<ImageJob> =
        pngs.iter().zip(&boxes).map(|(b, c)| ImageJob { bytes: b, crops: c.as_slice() }).collect();
    let crop_count: usize = boxes.iter().map(Vec::len).sum();
    let started = Instant::now();
    let done = embed_images(&mut embedder, &with_crops, batch);
    let crop_secs = started.elapsed().as_secs_f64();
    assert!(done.iter().all(|r| r.is_ok()));

    let report = serde_json::json!({
        "images": images,
        "size": [config.width, config.height],
        "batch": batch,
        "frames_per_s": images as f64 / frame_secs,
        "crops": crop_count,
        // The crop pass embeds each frame and its label boxes, as `milkglass embed` does: squares per
        // second counts both, and the peer does the same work.
        "crop_pass_secs": crop_secs,
        "crop_pass_squares_per_s": (images + crop_count) as f64 / crop_secs,
    });
    println!("{report}");
}
