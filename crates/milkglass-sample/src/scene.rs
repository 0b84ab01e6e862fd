//! One frame's picture: a textured background and a few non-overlapping shapes.
//!
//! A scene is a pure function of the config's seed, the image size and the frame index, so
//! a single image can be rendered without generating the rest of the data set.

use crate::{Bbox, CLASSES, DetectionConfig, Stream, stream_rng};
use rand::Rng;

/// Background patterns; several of them, so that frame embeddings have more than one cluster
/// axis and the images are not trivially separable from their background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Texture {
    Stripes,
    Checker,
    NoiseGradient,
    Gradient,
}

impl Texture {
    pub(crate) const ALL: [Texture; 4] =
        [Texture::Stripes, Texture::Checker, Texture::NoiseGradient, Texture::Gradient];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Texture::Stripes => "stripes",
            Texture::Checker => "checker",
            Texture::NoiseGradient => "noise_gradient",
            Texture::Gradient => "gradient",
        }
    }

    pub(crate) fn index(self) -> usize {
        Texture::ALL.iter().position(|t| *t == self).expect("listed in ALL")
    }
}

/// One drawn object. It is painted inside the square `size` x `size` at (`left`, `top`);
/// `bbox` is the exact extent of the pixels it paints, which can be smaller than the square
/// (a triangle's tip row may be empty).
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub class: usize,
    left: u32,
    top: u32,
    size: u32,
    pub color: [u8; 3],
    pub bbox: Bbox,
}

impl Shape {
    fn new(class: usize, left: u32, top: u32, size: u32, color: [u8; 3]) -> Shape {
        let mut shape = Shape { class, left, top, size, color, bbox: [0.0; 4] };
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        shape.for_each_pixel(|x, y| {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        });
        assert!(x0 <= x1, "a shape of size {size} paints at least one pixel");
        shape.bbox = [f64::from(y0), f64::from(x0), f64::from(x1 - x0 + 1), f64::from(y1 - y0 + 1)];
        shape
    }

    /// Calls `paint(x, y)` for each pixel the shape covers. Pixels are tested at their
    /// centres in doubled integer coordinates, so no rounding is involved: the same pixels on
    /// every platform, and the boxes are exact.
    fn for_each_pixel(&self, mut paint: impl FnMut(u32, u32)) {
        let s = i64::from(self.size);
        for dy in 0..self.size {
            for dx in 0..self.size {
                // Pixel centre relative to the square's centre, in half pixels.
                let (px, py) = (2 * i64::from(dx) + 1 - s, 2 * i64::from(dy) + 1 - s);
                // Indexes follow CLASSES: circle, square, triangle, cross.
                let inside = match self.class {
                    0 => px * px + py * py <= s * s,
                    1 => true,
                    // Apex at the top centre, base along the bottom edge.
                    2 => 2 * px.abs() <= py + s,
                    // A plus sign with arms a third of the size thick.
                    _ => 3 * px.abs() <= s || 3 * py.abs() <= s,
                };
                if inside {
                    paint(self.left + dx, self.top + dy);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Scene {
    pub texture: Texture,
    /// Scales every colour; recorded as frame metadata.
    pub brightness: f64,
    colors: [[u8; 3]; 2],
    /// Stripe width or checker cell size, in pixels.
    period: u32,
    /// Stripe direction and gradient axis: 0 horizontal, 1 vertical, 2 and 3 diagonal.
    orientation: u32,
    noise_seed: u64,
    pub shapes: Vec<Shape>,
}

/// Smallest and largest shape side for an image size: big enough to see, small enough that
/// several fit.
pub(crate) fn size_range(config: &DetectionConfig) -> (u32, u32) {
    let side = config.width.min(config.height);
    let min = (side / 10).max(6);
    (min, (side * 2 / 7).max(min))
}

impl Scene {
    pub(crate) fn generate(config: &DetectionConfig, index: usize) -> Scene {
        let mut rng = stream_rng(config.seed, Stream::Scene, index);
        let texture = Texture::ALL[rng.random_range(0..Texture::ALL.len())];
        let brightness = (rng.random_range(0.6..1.25_f64) * 100.0).round() / 100.0;
        // Greyish backgrounds with a faint tint, so the saturated shapes stand out.
        let grey = rng.random_range(70..=170);
        let contrast = rng.random_range(30..=70);
        let mut background = |grey: i32| {
            let tint = [rng.random_range(-15..=15), rng.random_range(-15..=15), rng.random_range(-15..=15)];
            scaled(tint.map(|t| grey + t), brightness)
        };
        let colors = [background(grey), background(grey + contrast)];
        let period = rng.random_range(6..=24);
        let orientation = rng.random_range(0..4);
        let noise_seed = rng.random();

        let (w, h) = (config.width, config.height);
        let (min_size, max_size) = size_range(config);
        let wanted = rng.random_range(1..=5);
        let mut shapes: Vec<Shape> = Vec::with_capacity(wanted);
        // Rejection sampling keeps shapes apart: no occlusion, so every box is the whole shape.
        for _ in 0..wanted * 20 {
            if shapes.len() == wanted {
                break;
            }
            let size = rng.random_range(min_size..=max_size);
            let (left, top) = (rng.random_range(0..=w - size), rng.random_range(0..=h - size));
            let clear = shapes.iter().all(|s| {
                const GAP: u32 = 2;
                left + size + GAP <= s.left
                    || s.left + s.size + GAP <= left
                    || top + size + GAP <= s.top
                    || s.top + s.size + GAP <= top
            });
            if clear {
                let class = rng.random_range(0..CLASSES.len());
                let jitter = [rng.random_range(-25..=25), rng.random_range(-25..=25), rng.random_range(-25..=25)];
                let base = CLASSES[class].1;
                let color = scaled([0, 1, 2].map(|c| i32::from(base[c]) + jitter[c]), brightness);
                shapes.push(Shape::new(class, left, top, size, color));
            }
        }
        Scene { texture, brightness, colors, period, orientation, noise_seed, shapes }
    }

    /// The class covering the most pixels, by box area (ties go to the lower class id).
    pub(crate) fn dominant_class(&self) -> usize {
        let mut area = [0.0; CLASSES.len()];
        for shape in &self.shapes {
            area[shape.class] += shape.bbox[2] * shape.bbox[3];
        }
        (0..CLASSES.len()).fold(0, |best, c| if area[c] > area[best] { c } else { best })
    }

    /// Calls `paint(x, y, shape_index)` for every shape pixel.
    pub(crate) fn for_each_shape_pixel(&self, mut paint: impl FnMut(u32, u32, usize)) {
        for (i, shape) in self.shapes.iter().enumerate() {
            shape.for_each_pixel(|x, y| paint(x, y, i));
        }
    }

    /// The image as 8-bit RGB rows.
    pub(crate) fn render_rgb(&self, width: u32, height: u32) -> Vec<u8> {
        let mut rgb = vec![0; width as usize * height as usize * 3];
        let [a, b] = self.colors;
        let p = self.period;
        for y in 0..height {
            for x in 0..width {
                let color = match self.texture {
                    Texture::Stripes => {
                        let along = match self.orientation {
                            0 => y,
                            1 => x,
                            2 => x + y,
                            _ => x + height - y,
                        };
                        if (along / p).is_multiple_of(2) { a } else { b }
                    }
                    Texture::Checker => {
                        if (x / p + y / p).is_multiple_of(2) {
                            a
                        } else {
                            b
                        }
                    }
                    Texture::Gradient => lerp(a, b, self.gradient_position(x, y, width, height)),
                    Texture::NoiseGradient => {
                        let base = lerp(a, b, self.gradient_position(x, y, width, height));
                        // Hash noise (not an RNG stream) so each pixel is independent of draw order.
                        let noise =
                            (splitmix64(self.noise_seed ^ ((u64::from(x) << 32) | u64::from(y))) % 61) as i32 - 30;
                        base.map(|c| (i32::from(c) + noise).clamp(0, 255) as u8)
                    }
                };
                let i = (y as usize * width as usize + x as usize) * 3;
                rgb[i..i + 3].copy_from_slice(&color);
            }
        }
        self.for_each_shape_pixel(|x, y, s| {
            let i = (y as usize * width as usize + x as usize) * 3;
            rgb[i..i + 3].copy_from_slice(&self.shapes[s].color);
        });
        rgb
    }

    /// Where a pixel lies along the gradient axis, from 0 to 256.
    fn gradient_position(&self, x: u32, y: u32, width: u32, height: u32) -> u32 {
        match self.orientation {
            0 => y * 256 / height,
            1 => x * 256 / width,
            2 => (x * 128 / width) + (y * 128 / height),
            _ => (x * 128 / width) + 128 - (y * 128 / height),
        }
    }
}

/// Encodes 8-bit RGB rows as PNG. Fast compression: the demo renders hundreds of images at
/// start-up, and these flat pictures compress well anyway.
pub(crate) fn encode_png(rgb: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().expect("PNG header for a valid size");
    writer.write_image_data(rgb).expect("PNG data of the right length into memory");
    writer.finish().expect("PNG into memory");
    out
}

fn scaled(rgb: [i32; 3], brightness: f64) -> [u8; 3] {
    rgb.map(|c| (f64::from(c.clamp(0, 255)) * brightness).round().clamp(0.0, 255.0) as u8)
}

/// Linear mix of two colours; `t` runs from 0 (all `a`) to 256 (all `b`).
fn lerp(a: [u8; 3], b: [u8; 3], t: u32) -> [u8; 3] {
    let t = t.min(256);
    [0, 1, 2].map(|c| ((u32::from(a[c]) * (256 - t) + u32::from(b[c]) * t) >> 8) as u8)
}

/// SplitMix64's finaliser: a cheap, well-mixed hash of a 64-bit value.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
