//! Generated images as people look at them: the generator's `[N, C, H, W]` output (about
//! [−1, 1]) to RGB8, one PNG per image and a grid.

use std::path::Path;

use crate::data::sheet::Canvas;
use crate::error::{Error, Result};

/// `[N, C, H, W]` floats in [−1, 1] → N images `[H, W, 3]` in RGB8, as the reference writes its
/// snapshots: `(x·127.5 + 128)` clamped to [0, 255] and truncated. One channel is shown as grey.
pub fn to_rgb8(data: &[f32], [n, c, h, w]: [usize; 4]) -> Result<Vec<Vec<u8>>> {
    if data.len() != n * c * h * w || !(c == 1 || c == 3) {
        return Err(Error::shape(
            "to_rgb8",
            format!(
                "{} values for images [{n}, {c}, {h}, {w}] (1 or 3 channels)",
                data.len()
            ),
        ));
    }
    let px = |v: f32| (v * 127.5 + 128.0).clamp(0.0, 255.0) as u8;
    Ok((0..n)
        .map(|i| {
            let img = &data[i * c * h * w..][..c * h * w];
            (0..h * w)
                .flat_map(|p| {
                    let ch = |k: usize| px(img[(if c == 1 { 0 } else { k }) * h * w + p]);
                    [ch(0), ch(1), ch(2)]
                })
                .collect()
        })
        .collect())
}

/// Images `[h, w, 3]` in a grid of `columns`, 2-pixel white gutters.
pub fn grid(images: &[Vec<u8>], h: usize, w: usize, columns: usize) -> Canvas {
    let cols = columns.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(cols).max(1);
    let gap = 2;
    let mut canvas = Canvas::new(cols * (w + gap) + gap, rows * (h + gap) + gap, [255; 3]);
    for (i, img) in images.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        canvas.blit(img, w, h, gap + c * (w + gap), gap + r * (h + gap), 1);
    }
    canvas
}

/// Writes `{i:03}.png` per image and `grid.png` (about square) into `dir`; returns the grid's path.
pub fn write_pngs(
    dir: &Path,
    images: &[Vec<u8>],
    h: usize,
    w: usize,
) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("creating the directory: {e}")))?;
    for (i, img) in images.iter().enumerate() {
        let mut one = Canvas::new(w, h, [0; 3]);
        one.blit(img, w, h, 0, 0, 1);
        one.save_png(&dir.join(format!("{i:03}.png")))?;
    }
    let columns = (images.len() as f64).sqrt().ceil() as usize;
    let path = dir.join("grid.png");
    grid(images, h, w, columns).save_png(&path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_conversion_and_a_grid() {
        // −1 → 0.5 → 0; 0 → 128; 1 → 255.5 → 255; out of range clamps.
        let imgs = to_rgb8(&[-1.0, 0.0, 1.0, 3.0, -3.0, 0.5], [2, 1, 1, 3]).unwrap();
        assert_eq!(imgs[0], vec![0, 0, 0, 128, 128, 128, 255, 255, 255]);
        assert_eq!(imgs[1][..3], [255, 255, 255]);
        assert!(to_rgb8(&[0.0; 5], [1, 1, 1, 3]).is_err());
        let g = grid(&imgs, 1, 3, 2);
        assert_eq!((g.width, g.height), (2 * 5 + 2, 3 + 2));
    }
}
