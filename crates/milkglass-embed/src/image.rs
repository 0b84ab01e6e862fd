//! Decoding PNG and JPEG bytes to RGB, and resampling a region to the model's input square.

use crate::{EmbedError, EmbedResult};
use std::io::Cursor;

/// Images larger than this many pixels are refused before decoding (decompression bombs).
pub const MAX_PIXELS: u64 = 100_000_000;

/// 8-bit RGB pixels, row after row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// A region of an image in pixels, as label boxes give it (`left`, `top`, `width`, `height`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

impl RgbImage {
    /// Decodes PNG or JPEG bytes (told apart by their signatures).
    pub fn decode(bytes: &[u8]) -> EmbedResult<RgbImage> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            decode_png(bytes)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            decode_jpeg(bytes)
        } else {
            Err(EmbedError::Image("not a PNG or JPEG image (unknown signature)".into()))
        }
    }

    /// The whole image as a region.
    pub fn full(&self) -> Region {
        Region { left: 0.0, top: 0.0, width: self.width as f64, height: self.height as f64 }
    }

    /// Resamples `region` (clamped to the image) to `side` x `side` RGB with bilinear filtering, into
    /// `out` (`side * side * 3` bytes). A region with no area inside the image is an error.
    pub fn resample_into(&self, region: Region, side: usize, out: &mut [u8]) -> EmbedResult<()> {
        assert_eq!(out.len(), side * side * 3, "output buffer size");
        let (w, h) = (self.width as f64, self.height as f64);
        let x0 = region.left.max(0.0);
        let y0 = region.top.max(0.0);
        let x1 = (region.left + region.width).min(w);
        let y1 = (region.top + region.height).min(h);
        if !(x1 - x0 >= 1.0 && y1 - y0 >= 1.0) {
            return Err(EmbedError::Image(format!(
                "the region left={} top={} width={} height={} has no pixels inside the {}x{} image",
                region.left, region.top, region.width, region.height, self.width, self.height
            )));
        }
        let sx = (x1 - x0) / side as f64;
        let sy = (y1 - y0) / side as f64;
        let stride = self.width as usize * 3;
        let max_x = self.width as usize - 1;
        let max_y = self.height as usize - 1;
        // Sample at pixel centres; precompute the horizontal taps once per output column.
        let taps: Vec<(usize, usize, f32)> = (0..side)
            .map(|ox| {
                let fx = (x0 + (ox as f64 + 0.5) * sx - 0.5).max(0.0);
                let ix = (fx.floor() as usize).min(max_x);
                (ix, (ix + 1).min(max_x), (fx - ix as f64).clamp(0.0, 1.0) as f32)
            })
            .collect();
        for oy in 0..side {
            let fy = (y0 + (oy as f64 + 0.5) * sy - 0.5).max(0.0);
            let iy = (fy.floor() as usize).min(max_y);
            let iy1 = (iy + 1).min(max_y);
            let wy = (fy - iy as f64).clamp(0.0, 1.0) as f32;
            let row0 = &self.pixels[iy * stride..(iy + 1) * stride];
            let row1 = &self.pixels[iy1 * stride..(iy1 + 1) * stride];
            let out_row = &mut out[oy * side * 3..(oy + 1) * side * 3];
            for (ox, &(ix, ix1, wx)) in taps.iter().enumerate() {
                for c in 0..3 {
                    let top = row0[ix * 3 + c] as f32 * (1.0 - wx) + row0[ix1 * 3 + c] as f32 * wx;
                    let bottom = row1[ix * 3 + c] as f32 * (1.0 - wx) + row1[ix1 * 3 + c] as f32 * wx;
                    out_row[ox * 3 + c] = (top * (1.0 - wy) + bottom * wy).round() as u8;
                }
            }
        }
        Ok(())
    }
}

fn check_size(width: u64, height: u64) -> EmbedResult<()> {
    if width == 0 || height == 0 {
        return Err(EmbedError::Image("the image has no pixels".into()));
    }
    if width * height > MAX_PIXELS {
        return Err(EmbedError::Image(format!("the image is {width}x{height}, over the limit of {MAX_PIXELS} pixels")));
    }
    Ok(())
}

fn decode_png(bytes: &[u8]) -> EmbedResult<RgbImage> {
    let bad = |e: png::DecodingError| EmbedError::Image(format!("invalid PNG: {e}"));
    let mut decoder =
        png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: (MAX_PIXELS * 8) as usize });
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(bad)?;
    let (width, height) = (reader.info().width, reader.info().height);
    check_size(width as u64, height as u64)?;
    let size = reader.output_buffer_size().ok_or_else(|| EmbedError::Image("the PNG is too large".into()))?;
    let mut buffer = vec![0; size];
    let info = reader.next_frame(&mut buffer).map_err(bad)?;
    buffer.truncate(info.buffer_size());
    let pixels = match info.color_type {
        png::ColorType::Rgb => buffer,
        png::ColorType::Rgba => buffer.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Grayscale => buffer.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => buffer.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        png::ColorType::Indexed => return Err(EmbedError::Image("indexed PNG was not expanded".into())),
    };
    Ok(RgbImage { width, height, pixels })
}

fn decode_jpeg(bytes: &[u8]) -> EmbedResult<RgbImage> {
    let bad = |e: jpeg_decoder::Error| EmbedError::Image(format!("invalid JPEG: {e}"));
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().map_err(bad)?;
    let info = decoder.info().ok_or_else(|| EmbedError::Image("invalid JPEG: no header".into()))?;
    check_size(info.width as u64, info.height as u64)?;
    let raw = decoder.decode().map_err(bad)?;
    let pixels = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => raw,
        jpeg_decoder::PixelFormat::L8 => raw.iter().flat_map(|&g| [g, g, g]).collect(),
        jpeg_decoder::PixelFormat::L16 => raw.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        jpeg_decoder::PixelFormat::CMYK32 => raw
            .chunks_exact(4)
            .flat_map(|p| {
                let k = 255 - p[3] as u16;
                [p[0], p[1], p[2]].map(|c| ((255 - c as u16) * k / 255) as u8)
            })
            .collect(),
    };
    Ok(RgbImage { width: info.width as u32, height: info.height as u32, pixels })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> RgbImage {
        let mut pixels = Vec::new();
        for y in 0..height {
            for x in 0..width {
                pixels.extend([(x * 255 / (width - 1)) as u8, (y * 255 / (height - 1)) as u8, 128]);
            }
        }
        RgbImage { width, height, pixels }
    }

    #[test]
    fn a_flat_image_resamples_to_the_same_colour() {
        let image = RgbImage { width: 7, height: 5, pixels: [10u8, 200, 30].repeat(35) };
        let mut out = vec![0; 4 * 4 * 3];
        image.resample_into(image.full(), 4, &mut out).unwrap();
        assert!(out.chunks_exact(3).all(|p| p == [10, 200, 30]));
    }

    #[test]
    fn resampling_keeps_a_gradient_monotonic_and_crops_pick_their_region() {
        let image = gradient(64, 64);
        let mut out = vec![0; 8 * 8 * 3];
        image.resample_into(image.full(), 8, &mut out).unwrap();
        let reds: Vec<u8> = (0..8).map(|x| out[x * 3]).collect();
        assert!(reds.windows(2).all(|w| w[0] < w[1]), "{reds:?}");
        // The right half only: every red value is past the middle.
        let right = Region { left: 32.0, top: 0.0, width: 32.0, height: 64.0 };
        image.resample_into(right, 8, &mut out).unwrap();
        assert!(out.chunks_exact(3).all(|p| p[0] >= 127), "{:?}", &out[..24]);
    }

    #[test]
    fn regions_are_clamped_and_empty_ones_refused() {
        let image = gradient(16, 16);
        let mut out = vec![0; 4 * 4 * 3];
        let spilling = Region { left: -10.0, top: 8.0, width: 20.0, height: 100.0 };
        image.resample_into(spilling, 4, &mut out).unwrap();
        let outside = Region { left: 20.0, top: 0.0, width: 5.0, height: 5.0 };
        let err = image.resample_into(outside, 4, &mut out).unwrap_err();
        assert!(err.to_string().contains("no pixels inside"), "{err}");
    }

    #[test]
    fn png_round_trips_and_garbage_is_refused() {
        let image = gradient(9, 6);
        let mut encoded = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut encoded, 9, 6);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            encoder.write_header().unwrap().write_image_data(&image.pixels).unwrap();
        }
        assert_eq!(RgbImage::decode(&encoded).unwrap(), image);
        assert!(RgbImage::decode(b"GIF89a....").unwrap_err().to_string().contains("unknown signature"));
        let truncated = &encoded[..encoded.len() / 2];
        assert!(RgbImage::decode(truncated).unwrap_err().to_string().contains("invalid PNG"));
        assert!(RgbImage::decode(&[0xFF, 0xD8, 0xFF, 0, 1]).unwrap_err().to_string().contains("invalid JPEG"));
    }
}
