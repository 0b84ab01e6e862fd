//! Clustered embeddings that stand in for a vision model's.
//!
//! Each embedding is a weighted sum of fixed random "centroid" directions plus Gaussian noise,
//! normalised to unit length. What the centroids stand for is what the features built on
//! embeddings should be able to discover:
//! - a crop (label) embedding points at its object's TRUE class, whatever class the label
//!   claims, so a wrong-class label sits in another class's cluster; a crop that misses part of
//!   its object (shifted boxes, false positives) drifts towards a shared "background" direction;
//! - a frame embedding points at its background texture plus its dominant class.

use crate::scene::Texture;
use crate::{CLASSES, DetectionConfig, Stream, stream_rng};
use rand::Rng;
use rand::rngs::StdRng;

/// Length of the noise vector relative to the unit-length centroids. Large enough that
/// clusters have visible spread, small enough that nearest-centroid is almost always right.
const CROP_NOISE: f64 = 0.5;
const FRAME_NOISE: f64 = 0.5;

pub(crate) struct Space {
    frame_by_texture: Vec<Vec<f64>>,
    frame_by_class: Vec<Vec<f64>>,
    crop_by_class: Vec<Vec<f64>>,
    crop_background: Vec<f64>,
}

impl Space {
    pub(crate) fn new(config: &DetectionConfig) -> Space {
        let mut rng = stream_rng(config.seed, Stream::Centroids, 0);
        let mut directions = |count: usize, dim: usize| -> Vec<Vec<f64>> {
            (0..count).map(|_| unit((0..dim).map(|_| gaussian(&mut rng)).collect())).collect()
        };
        let frame_by_texture = directions(Texture::ALL.len(), config.frame_embedding_dim);
        let frame_by_class = directions(CLASSES.len(), config.frame_embedding_dim);
        let crop_by_class = directions(CLASSES.len(), config.label_embedding_dim);
        let crop_background = directions(1, config.label_embedding_dim).remove(0);
        Space { frame_by_texture, frame_by_class, crop_by_class, crop_background }
    }

    pub(crate) fn frame(&self, rng: &mut StdRng, texture: Texture, dominant_class: usize) -> Vec<f32> {
        let parts = [(0.8, &self.frame_by_texture[texture.index()]), (0.8, &self.frame_by_class[dominant_class])];
        to_f32(unit(mix(rng, &parts, FRAME_NOISE)))
    }

    /// The embedding of a crop that covers `overlap` (its IoU, 0 to 1) of an object of class
    /// `true_class`.
    pub(crate) fn crop(&self, rng: &mut StdRng, true_class: usize, overlap: f64) -> Vec<f32> {
        let parts = [(overlap, &self.crop_by_class[true_class]), (1.0 - overlap, &self.crop_background)];
        to_f32(unit(mix(rng, &parts, CROP_NOISE)))
    }
}

/// `sum(weight * direction) + noise`, where the noise vector's expected length is `noise`
/// whatever the dimension.
fn mix(rng: &mut StdRng, parts: &[(f64, &Vec<f64>)], noise: f64) -> Vec<f64> {
    let dim = parts[0].1.len();
    let sd = noise / (dim as f64).sqrt();
    (0..dim)
        .map(|i| parts.iter().map(|(weight, direction)| weight * direction[i]).sum::<f64>() + sd * gaussian(rng))
        .collect()
}

/// A standard normal sample, approximated by the sum of four uniforms (Irwin-Hall). Box-Muller
/// would need `ln` and `cos`, whose last bits vary between platform maths libraries; this uses
/// only exactly rounded arithmetic, so embeddings are bit-identical everywhere.
fn gaussian(rng: &mut StdRng) -> f64 {
    let sum: f64 = (0..4).map(|_| rng.random::<f64>()).sum();
    // Four U(0,1) have mean 2 and variance 4/12 = 1/3.
    (sum - 2.0) * 3.0_f64.sqrt()
}

fn unit(v: Vec<f64>) -> Vec<f64> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        // Practically impossible; any unit vector will do.
        let mut e = vec![0.0; v.len()];
        e[0] = 1.0;
        return e;
    }
    v.into_iter().map(|x| x / norm).collect()
}

fn to_f32(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
}
