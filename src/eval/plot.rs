//! Line plots as PNG (loss curves): axes with tick labels, one polyline per series, a legend.
//! Drawn on the contact sheet's `Canvas` with its bitmap font; no plotting dependency.

use std::path::Path;

use crate::data::sheet::Canvas;
use crate::error::{Error, Result};

/// One named series of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub colour: [u8; 3],
}

const W: usize = 640;
const H: usize = 400;
const LEFT: usize = 64;
const RIGHT: usize = 16;
const TOP: usize = 28;
const BOTTOM: usize = 40;

fn line(c: &mut Canvas, (x0, y0): (f64, f64), (x1, y1): (f64, f64), colour: [u8; 3]) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
            c.put(x.round() as usize + dx, y.round() as usize + dy, colour);
        }
    }
}

/// Writes a line chart of `series` with a title and axis names to `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_name: &str,
    y_name: &str,
    series: &[Series],
) -> Result<()> {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.is_empty() {
        return Err(Error::file(path, "nothing to plot: no finite points"));
    }
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let pad = 0.05 * (y1 - y0);
    (y0, y1) = (y0 - pad, y1 + pad);
    x0 = x0.min(x1);
    let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
    let to_px = |(x, y): (f64, f64)| {
        (
            LEFT as f64 + (x - x0) / (x1 - x0) * pw,
            TOP as f64 + (1.0 - (y - y0) / (y1 - y0)) * ph,
        )
    };
    let mut c = Canvas::new(W, H, [255, 255, 255]);
    let grey = [200, 200, 200];
    let ink = [40, 40, 40];
    for k in 0..=4 {
        let fy = y0 + (y1 - y0) * k as f64 / 4.0;
        let (_, py) = to_px((x0, fy));
        line(&mut c, (LEFT as f64, py), ((W - RIGHT) as f64, py), grey);
        c.text(4, py as usize - 3, &format!("{fy:.4}"), ink);
        let fx = x0 + (x1 - x0) * k as f64 / 4.0;
        let (px, _) = to_px((fx, y0));
        c.text(px as usize - 6, H - BOTTOM + 6, &format!("{fx:.0}"), ink);
    }
    line(
        &mut c,
        (LEFT as f64, TOP as f64),
        (LEFT as f64, (H - BOTTOM) as f64),
        ink,
    );
    line(
        &mut c,
        (LEFT as f64, (H - BOTTOM) as f64),
        ((W - RIGHT) as f64, (H - BOTTOM) as f64),
        ink,
    );
    c.text(LEFT, 8, title, ink);
    c.text(W / 2 - 20, H - 14, x_name, ink);
    c.text(4, TOP - 14, y_name, ink);
    for (i, s) in series.iter().enumerate() {
        let mut prev: Option<(f64, f64)> = None;
        for &p in s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
        {
            let q = to_px(p);
            if let Some(a) = prev {
                line(&mut c, a, q, s.colour);
            }
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1), (1, 2)] {
                c.put(
                    (q.0 as usize + dx).saturating_sub(1),
                    (q.1 as usize + dy).saturating_sub(1),
                    s.colour,
                );
            }
            prev = Some(q);
        }
        let ly = TOP + 6 + 12 * i;
        line(
            &mut c,
            ((W - 150) as f64, ly as f64 + 3.0),
            ((W - 130) as f64, ly as f64 + 3.0),
            s.colour,
        );
        c.text(W - 124, ly, s.name, ink);
    }
    c.save_png(path)
}
