//! Contact sheets: a grid of stimuli with their captions beneath, written as PNG, so a person can
//! see at a glance what a dataset holds (and which captions are deliberately poor).

use std::path::Path;

use super::font;
use crate::error::{Error, Result};

/// An RGB8 image being drawn.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    /// `[height, width, 3]`.
    pub pixels: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, fill: [u8; 3]) -> Canvas {
        Canvas {
            width,
            height,
            pixels: fill
                .iter()
                .copied()
                .cycle()
                .take(width * height * 3)
                .collect(),
        }
    }

    pub fn put(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.width && y < self.height {
            self.pixels[(y * self.width + x) * 3..][..3].copy_from_slice(&c);
        }
    }

    /// Copies an `[h, w, 3]` image with its top-left at (x, y), each pixel as a `scale`² block.
    pub fn blit(&mut self, img: &[u8], w: usize, h: usize, x: usize, y: usize, scale: usize) {
        for sy in 0..h * scale {
            for sx in 0..w * scale {
                let p = &img[((sy / scale) * w + sx / scale) * 3..][..3];
                self.put(x + sx, y + sy, [p[0], p[1], p[2]]);
            }
        }
    }

    /// One line of text with its top-left at (x, y).
    pub fn text(&mut self, x: usize, y: usize, text: &str, colour: [u8; 3]) {
        font::for_each_pixel(text, |px, py| self.put(x + px, y + py, colour));
    }

    /// Encodes as PNG and writes atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc
                .write_header()
                .map_err(|e| Error::file(path, format!("encoding PNG: {e}")))?;
            w.write_image_data(&self.pixels)
                .map_err(|e| Error::file(path, format!("encoding PNG: {e}")))?;
        }
        crate::fsio::write_atomic(path, &bytes)
    }
}

/// One tile of a contact sheet.
#[derive(Clone)]
pub struct Tile<'a> {
    /// `[h, w, 3]`.
    pub image: &'a [u8],
    /// Drawn above the image ("#12 train").
    pub label: String,
    /// Each caption and whether it is known to be poor (drawn in red).
    pub captions: Vec<(String, bool)>,
}

const MARGIN: usize = 10;
const TILE_WIDTH: usize = 264;
const INK: [u8; 3] = [30, 30, 30];
const POOR: [u8; 3] = [190, 30, 30];
const PAPER: [u8; 3] = [250, 250, 247];

/// Lays `tiles` out `columns` to a row: each image scaled by the largest integer factor that
/// fits the tile width, its captions wrapped beneath.
pub fn contact_sheet(tiles: &[Tile], image_size: [usize; 2], columns: usize) -> Canvas {
    let [h, w] = image_size;
    let columns = columns.clamp(1, tiles.len().max(1));
    let scale = (TILE_WIDTH / w.max(1)).max(1);
    let tile_w = TILE_WIDTH.max(w * scale);
    let chars = tile_w / font::ADVANCE;
    // Wrapped caption lines per tile, numbered "1 ..", with continuation lines indented.
    let lines: Vec<Vec<(String, bool)>> = tiles
        .iter()
        .map(|t| {
            t.captions
                .iter()
                .enumerate()
                .flat_map(|(i, (c, poor))| {
                    font::wrap(c, chars - 2)
                        .into_iter()
                        .enumerate()
                        .map(move |(j, l)| {
                            (
                                if j == 0 {
                                    format!("{} {l}", i + 1)
                                } else {
                                    format!("  {l}")
                                },
                                *poor,
                            )
                        })
                })
                .collect()
        })
        .collect();
    let rows: Vec<usize> = lines
        .chunks(columns)
        .map(|row| {
            font::LINE + h * scale + 4 + row.iter().map(|l| l.len()).max().unwrap_or(0) * font::LINE
        })
        .collect();
    let width = MARGIN + columns * (tile_w + MARGIN);
    let height = MARGIN + rows.iter().map(|r| r + MARGIN).sum::<usize>();
    let mut canvas = Canvas::new(width, height, PAPER);
    let mut y = MARGIN;
    for (r, row_h) in rows.iter().enumerate() {
        for c in 0..columns {
            let Some(tile) = tiles.get(r * columns + c) else {
                break;
            };
            let x = MARGIN + c * (tile_w + MARGIN);
            canvas.text(x, y, &tile.label, INK);
            canvas.blit(
                tile.image,
                w,
                h,
                x + (tile_w - w * scale) / 2,
                y + font::LINE,
                scale,
            );
            let mut ty = y + font::LINE + h * scale + 4;
            for (line, poor) in &lines[r * columns + c] {
                canvas.text(x, ty, line, if *poor { POOR } else { INK });
                ty += font::LINE;
            }
        }
        y += row_h + MARGIN;
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sheet_holds_its_images_and_writes_a_png() {
        let img = vec![200u8; 8 * 8 * 3];
        let tiles: Vec<Tile> = (0..3)
            .map(|i| Tile {
                image: &img,
                label: format!("#{i}"),
                captions: vec![("a red circle".into(), false), ("vague".into(), true)],
            })
            .collect();
        let sheet = contact_sheet(&tiles, [8, 8], 2);
        assert_eq!(sheet.width, MARGIN + 2 * (TILE_WIDTH + MARGIN));
        // The first image, scaled 33×, starts one text line below the top margin.
        let (x, y) = (MARGIN, MARGIN + font::LINE);
        assert_eq!(
            &sheet.pixels[(y * sheet.width + x) * 3..][..3],
            &[200, 200, 200]
        );
        let path =
            std::env::temp_dir().join(format!("mindreader-sheet-{}.png", std::process::id()));
        sheet.save_png(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_file(&path).ok();
    }
}
