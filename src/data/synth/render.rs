//! Rasterises a `Scene` into RGB pixels at any size, with anti-aliased edges from signed
//! distance functions, and measures how much of each object stays visible (occlusion).

use super::scene::{BackgroundKind, Object, Scene, Texture, BACKGROUND_COLOURS, COLOURS};

/// Signed distance (negative inside) from local point (x, y) to a shape of radius r centred on
/// the origin; y grows downwards like image rows. Exact or close to it near the edge, which is
/// all anti-aliasing needs.
fn sdf(shape: usize, x: f32, y: f32, r: f32) -> f32 {
    let boxd = |x: f32, y: f32, bx: f32, by: f32| {
        let (dx, dy) = (x.abs() - bx, y.abs() - by);
        (dx.max(0.0).hypot(dy.max(0.0))) + dx.max(dy).min(0.0)
    };
    match shape {
        0 => x.hypot(y) - r,
        1 => boxd(x, y, r * 0.85, r * 0.85),
        2 => {
            // Equilateral triangle pointing up (Inigo Quilez's sdEquilateralTriangle), with its
            // centroid at the origin.
            let k = 3f32.sqrt();
            let (mut px, mut py) = (x.abs() - r, -y + r / k);
            if px + k * py > 0.0 {
                (px, py) = ((px - k * py) / 2.0, (-k * px - py) / 2.0);
            }
            px -= px.clamp(-2.0 * r, 0.0);
            -(px.hypot(py)) * py.signum()
        }
        3 => (x.abs() + y.abs() - r) / std::f32::consts::SQRT_2,
        4 => boxd(x, y, r, r * 0.33).min(boxd(x, y, r * 0.33, r)),
        _ => (x.hypot(y) - r * 0.72).abs() - r * 0.28,
    }
}

/// The background colour at (u, v) in [0, 1]², as f32 RGB in 0..255.
fn background(scene: &Scene, u: f32, v: f32) -> [f32; 3] {
    let bg = &scene.background;
    let a = BACKGROUND_COLOURS[bg.colour_a].1.map(f32::from);
    let b = BACKGROUND_COLOURS[bg.colour_b].1.map(f32::from);
    let (c, s) = (bg.angle.cos(), bg.angle.sin());
    let t = match bg.kind {
        BackgroundKind::Flat => 0.0,
        // Position along the direction, mapped so the image diagonal spans 0..1.
        BackgroundKind::Gradient => {
            (0.5 + ((u - 0.5) * c + (v - 0.5) * s) / std::f32::consts::SQRT_2).clamp(0.0, 1.0)
        }
        BackgroundKind::Texture(Texture::Stripes) => {
            (((u * c + v * s) / bg.period).rem_euclid(1.0) < 0.5) as u8 as f32
        }
        BackgroundKind::Texture(Texture::Checker) => {
            (((u / bg.period).floor() + (v / bg.period).floor()) as i64).rem_euclid(2) as f32
        }
        BackgroundKind::Texture(Texture::Dots) => {
            let (fu, fv) = (
                (u / bg.period).rem_euclid(1.0) - 0.5,
                (v / bg.period).rem_euclid(1.0) - 0.5,
            );
            (fu.hypot(fv) < 0.3) as u8 as f32
        }
    };
    [0, 1, 2].map(|i| a[i] + (b[i] - a[i]) * t)
}

/// Coverage of pixel centre (u, v) by `o`: 0 outside, 1 inside, a one-pixel ramp across edges.
fn coverage(o: &Object, u: f32, v: f32, size: usize) -> f32 {
    let (dx, dy) = (u - o.x, v - o.y);
    if dx.abs() > o.size * 1.5 || dy.abs() > o.size * 1.5 {
        return 0.0;
    }
    let (c, s) = (o.rotation.cos(), o.rotation.sin());
    let (lx, ly) = (c * dx + s * dy, -s * dx + c * dy);
    (0.5 - sdf(o.shape, lx, ly, o.size) * size as f32).clamp(0.0, 1.0)
}

/// Each pixel's figure coverage, `[size, size]` in [0, 1]: how much of it any object covers (the
/// renderer's anti-aliased alpha). What early visual cortex's figure–ground response sees.
pub fn figure_map(scene: &Scene, size: usize) -> Vec<f32> {
    let mut map = vec![0f32; size * size];
    for (i, m) in map.iter_mut().enumerate() {
        let (u, v) = (
            ((i % size) as f32 + 0.5) / size as f32,
            ((i / size) as f32 + 0.5) / size as f32,
        );
        *m = scene
            .objects
            .iter()
            .map(|o| coverage(o, u, v, size))
            .fold(0.0, f32::max);
    }
    map
}

/// Draws `scene` as `[size, size, 3]` RGB and returns, per object, the fraction of its pixels
/// that no later (nearer) object covers.
pub fn render(scene: &Scene, size: usize) -> (Vec<u8>, Vec<f32>) {
    let mut img = vec![0u8; size * size * 3];
    let n = scene.objects.len();
    let (mut area, mut shown) = (vec![0u32; n], vec![0u32; n]);
    for py in 0..size {
        for px in 0..size {
            let (u, v) = (
                (px as f32 + 0.5) / size as f32,
                (py as f32 + 0.5) / size as f32,
            );
            let mut rgb = background(scene, u, v);
            let mut top = None;
            for (k, o) in scene.objects.iter().enumerate() {
                let a = coverage(o, u, v, size);
                if a > 0.0 {
                    let col = COLOURS[o.colour].1;
                    for i in 0..3 {
                        rgb[i] += (col[i] as f32 - rgb[i]) * a;
                    }
                    if a >= 0.5 {
                        area[k] += 1;
                        top = Some(k);
                    }
                }
            }
            if let Some(k) = top {
                shown[k] += 1;
            }
            let at = (py * size + px) * 3;
            for i in 0..3 {
                img[at + i] = rgb[i].round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    let visible = area
        .iter()
        .zip(&shown)
        .map(|(&a, &s)| if a == 0 { 0.0 } else { s as f32 / a as f32 })
        .collect();
    (img, visible)
}

#[cfg(test)]
mod tests {
    use super::super::scene::{Background, BackgroundKind};
    use super::*;

    fn scene(objects: Vec<Object>) -> Scene {
        let visible = vec![1.0; objects.len()];
        Scene {
            background: Background {
                kind: BackgroundKind::Flat,
                colour_a: 0,
                colour_b: 0,
                angle: 0.0,
                period: 0.1,
            },
            objects,
            visible,
        }
    }

    fn object(shape: usize, colour: usize, x: f32, y: f32, size: f32) -> Object {
        Object {
            shape,
            colour,
            size_class: 1,
            size,
            x,
            y,
            rotation: 0.0,
        }
    }

    #[test]
    fn every_shape_covers_its_centre_and_not_the_corner() {
        for shape in 0..6 {
            let s = scene(vec![object(shape, 0, 0.5, 0.5, 0.3)]);
            let (img, vis) = render(&s, 64);
            let px = |x: usize, y: usize| &img[(y * 64 + x) * 3..][..3];
            // Rings are hollow: probe on the ring instead of at the centre.
            let probe = if shape == 5 {
                px(32 + 14, 32)
            } else {
                px(32, 32)
            };
            assert_eq!(probe, COLOURS[0].1, "shape {shape}");
            assert_eq!(px(1, 1), BACKGROUND_COLOURS[0].1, "shape {shape}");
            assert_eq!(vis, vec![1.0]);
        }
    }

    #[test]
    fn the_figure_map_covers_the_objects_and_nothing_else() {
        let s = scene(vec![object(0, 1, 0.25, 0.25, 0.1)]);
        let map = figure_map(&s, 64);
        let at = |u: f32, v: f32| map[(v * 64.0) as usize * 64 + (u * 64.0) as usize];
        assert_eq!(at(0.25, 0.25), 1.0);
        assert_eq!(at(0.75, 0.75), 0.0);
        assert_eq!(at(0.25, 0.75), 0.0);
        let covered = map.iter().sum::<f32>() / (64.0 * 64.0);
        assert!((0.01..0.1).contains(&covered), "{covered}");
    }

    #[test]
    fn a_nearer_object_hides_a_farther_one() {
        let s = scene(vec![
            object(1, 0, 0.5, 0.5, 0.2),
            object(1, 4, 0.5, 0.5, 0.2),
        ]);
        let (_, vis) = render(&s, 64);
        assert_eq!(vis[1], 1.0);
        assert!(
            vis[0] < 0.05,
            "fully covered object still {} visible",
            vis[0]
        );
        let apart = scene(vec![
            object(0, 0, 0.25, 0.5, 0.1),
            object(0, 4, 0.75, 0.5, 0.1),
        ]);
        assert_eq!(render(&apart, 64).1, vec![1.0, 1.0]);
    }
}
