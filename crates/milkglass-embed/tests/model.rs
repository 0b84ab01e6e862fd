//! The real model on real images: the sample data set's rendered PNGs. Needs ONNX Runtime and the model,
//! which `scripts/test.sh` installs (`scripts/install-model.sh`).

use milkglass_embed::{EmbedError, Embedder, INPUT_SIDE, ImageJob, Region, RgbImage, embed_images};
use milkglass_sample::{DetectionConfig, render_png};

fn embedder() -> Embedder {
    Embedder::discover(2).unwrap_or_else(|e| panic!("{e} (scripts/test.sh installs both)"))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The same picture, slightly brighter and re-encoded: what copy detection must recognise.
fn brighter_copy(png: &[u8]) -> Vec<u8> {
    let image = RgbImage::decode(png).unwrap();
    let pixels: Vec<u8> = image.pixels.iter().map(|&p| p.saturating_add(12)).collect();
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, image.width, image.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.write_header().unwrap().write_image_data(&pixels).unwrap();
    }
    out
}

#[test]
fn frames_get_unit_vectors_and_a_copy_is_nearer_than_any_other_frame() {
    let mut embedder = embedder();
    assert_eq!(embedder.dimensions(), 512);
    let config = DetectionConfig { frames: 8, ..Default::default() };
    let images: Vec<Vec<u8>> = (0..8).map(|i| render_png(&config, i)).collect();
    let copy = brighter_copy(&images[3]);
    let mut jobs: Vec<ImageJob> = images.iter().map(|b| ImageJob { bytes: b, crops: &[] }).collect();
    jobs.push(ImageJob { bytes: &copy, crops: &[] });
    let vectors: Vec<Vec<f32>> = embed_images(&mut embedder, &jobs, 4).into_iter().map(|r| r.unwrap().frame).collect();
    for v in &vectors {
        assert_eq!(v.len(), 512);
        assert!((dot(v, v) - 1.0).abs() < 1e-4);
    }
    let to_copy = dot(&vectors[3], &vectors[8]);
    let nearest_other = (0..8).filter(|&i| i != 3).map(|i| dot(&vectors[3], &vectors[i])).fold(f32::MIN, f32::max);
    assert!(to_copy > nearest_other, "copy {to_copy} vs nearest other frame {nearest_other}");
    assert!(to_copy > 0.9, "a brightened copy should be a near-duplicate: {to_copy}");
    // Batching does not change the answer.
    let alone = embed_images(&mut embedder, &jobs[3..4], 1).pop().unwrap().unwrap().frame;
    assert!(dot(&alone, &vectors[3]) > 0.9999);
}

#[test]
fn crops_are_embedded_with_their_frame_and_bad_ones_do_not_fail_it() {
    let mut embedder = embedder();
    let config = DetectionConfig { frames: 2, ..Default::default() };
    let png = render_png(&config, 0);
    let crops = [
        Region { left: 0.0, top: 0.0, width: 128.0, height: 96.0 },
        Region { left: 500.0, top: 500.0, width: 10.0, height: 10.0 }, // outside the 256 x 192 image
        Region { left: 128.0, top: 96.0, width: 128.0, height: 96.0 },
    ];
    let garbage = b"not an image".to_vec();
    let jobs = [ImageJob { bytes: &png, crops: &crops }, ImageJob { bytes: &garbage, crops: &[] }];
    let mut results = embed_images(&mut embedder, &jobs, 8);
    assert!(matches!(results.pop().unwrap(), Err(EmbedError::Image(m)) if m.contains("unknown signature")));
    let frame = results.pop().unwrap().unwrap();
    assert!(frame.crops[1].is_none());
    let (a, b) = (frame.crops[0].as_ref().unwrap(), frame.crops[2].as_ref().unwrap());
    assert!(dot(a, &frame.frame) < 0.999 && dot(a, b) < 0.999, "crops must see their own region");
}

#[test]
fn a_missing_model_says_how_to_install_it() {
    let runtime = milkglass_embed::discover_runtime().unwrap();
    let err = Embedder::load(&runtime, std::path::Path::new("/nonexistent/model.onnx"), 1).err().unwrap();
    assert!(err.to_string().contains("scripts/install-model.sh"), "{err}");
    assert_eq!(INPUT_SIDE, 224);
}
