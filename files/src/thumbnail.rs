//! Thumbnails of uploaded images, decoded under limits: the width, the height and the memory
//! a decoder may allocate are capped before any pixel is decoded, so a small file that
//! claims to be 100,000 × 100,000 pixels (a decompression bomb) is refused, not allocated.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits};

/// The bounds a decode runs under.
#[derive(Debug, Clone, Copy)]
pub struct ThumbnailLimits {
    /// The largest width and height decoded, in pixels.
    pub max_side: u32,
    /// The most memory the decoder may allocate, in bytes.
    pub max_alloc: u64,
    /// The thumbnail fits in a square of this side.
    pub thumb_side: u32,
}

impl Default for ThumbnailLimits {
    fn default() -> Self {
        ThumbnailLimits {
            max_side: 10_000,
            max_alloc: 256 * 1024 * 1024,
            thumb_side: 320,
        }
    }
}

/// A thumbnail, and the size of the image it was made from.
#[derive(Debug, Clone)]
pub struct Thumbnail {
    pub width: u32,
    pub height: u32,
    /// The thumbnail: JPEG, or PNG where the image has transparency.
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
}

/// Decodes `image` (PNG, JPEG, GIF or WebP) within `limits` and scales it to fit the
/// thumbnail square, keeping its proportions. CPU-bound: call it on a blocking thread.
pub fn thumbnail(image: &[u8], limits: ThumbnailLimits) -> Result<Thumbnail, String> {
    let mut reader = ImageReader::new(Cursor::new(image))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP) => {}
        _ => return Err("not a PNG, JPEG, GIF or WebP image".into()),
    }
    let mut bounds = Limits::default();
    bounds.max_image_width = Some(limits.max_side);
    bounds.max_image_height = Some(limits.max_side);
    bounds.max_alloc = Some(limits.max_alloc);
    reader.limits(bounds);
    let decoded = reader.decode().map_err(|e| e.to_string())?;
    let (width, height) = (decoded.width(), decoded.height());
    let small = decoded.thumbnail(limits.thumb_side, limits.thumb_side);
    let mut bytes = Vec::new();
    let content_type = if small.color().has_alpha() {
        small
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        "image/png"
    } else {
        small
            .into_rgb8()
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Jpeg)
            .map_err(|e| e.to_string())?;
        "image/jpeg"
    };
    Ok(Thumbnail {
        width,
        height,
        bytes,
        content_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    /// PNG's chunk checksum (CRC-32, as in zlib).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn scales_to_the_square_and_keeps_proportions() {
        let t = thumbnail(&png(1000, 500), ThumbnailLimits::default()).unwrap();
        assert_eq!((t.width, t.height, t.content_type), (1000, 500, "image/jpeg"));
        let small = image::load_from_memory(&t.bytes).unwrap();
        assert_eq!((small.width(), small.height()), (320, 160));
    }

    #[test]
    fn refuses_a_decompression_bomb_and_non_images() {
        // A valid PNG header that claims 60,000 × 60,000 pixels (10.8 GB of RGB).
        let mut bomb = png(1, 1);
        bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = thumbnail(&bomb, ThumbnailLimits::default()).unwrap_err();
        assert!(err.to_lowercase().contains("limit"), "{err}");
        // Within the side limit but over the memory limit.
        let tight = ThumbnailLimits {
            max_alloc: 1024,
            ..ThumbnailLimits::default()
        };
        assert!(thumbnail(&png(100, 100), tight).is_err());
        assert!(thumbnail(b"%PDF-1.7", ThumbnailLimits::default()).is_err());
    }
}
