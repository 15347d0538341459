//! Scenes of the synthetic world: what is in each picture, how it is drawn at random, the
//! ground-truth feature vector a model should be able to recover, and the `targets/scene`
//! embedding made from it.
//!
//! A scene is a background (flat, gradient or texture) and 1–3 objects drawn back to front, so a
//! later object may hide part of an earlier one. Coordinates are fractions of the image width,
//! origin top-left, so one scene renders at any size.

use crate::rng::{stage, Rng};

pub const SHAPES: [&str; 6] = ["circle", "square", "triangle", "diamond", "cross", "ring"];

/// Object colours: names as captions say them, and RGB.
pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [215, 40, 40]),
    ("orange", [245, 140, 25]),
    ("yellow", [240, 215, 40]),
    ("green", [45, 165, 60]),
    ("blue", [40, 85, 215]),
    ("purple", [135, 60, 185]),
    ("white", [245, 245, 245]),
    ("black", [20, 20, 20]),
];

/// Background colours: muted, disjoint from the object palette so every object stands out.
pub const BACKGROUND_COLOURS: [(&str, [u8; 3]); 6] = [
    ("grey", [128, 128, 128]),
    ("beige", [222, 206, 170]),
    ("pale blue", [160, 200, 230]),
    ("navy", [30, 40, 85]),
    ("dark green", [40, 72, 48]),
    ("pink", [235, 185, 200]),
];

pub const SIZE_WORDS: [&str; 3] = ["small", "medium", "large"];
/// Object radius (fraction of the image width) for each size class.
pub const SIZE_RANGES: [(f32, f32); 3] = [(0.07, 0.11), (0.12, 0.17), (0.19, 0.25)];

pub const BACKGROUND_KINDS: [&str; 3] = ["flat", "gradient", "texture"];
pub const TEXTURES: [&str; 3] = ["stripes", "checker", "dots"];

/// Most objects in one scene.
pub const MAX_OBJECTS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackgroundKind {
    Flat,
    Gradient,
    Texture(Texture),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Texture {
    Stripes,
    Checker,
    Dots,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Background {
    pub kind: BackgroundKind,
    /// Index into `BACKGROUND_COLOURS`: the flat colour, gradient start or texture base.
    pub colour_a: usize,
    /// Gradient end or texture pattern colour (equal to `colour_a` for flat backgrounds).
    pub colour_b: usize,
    /// Gradient or stripe direction, radians.
    pub angle: f32,
    /// Texture period, fraction of the image width.
    pub period: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// Index into `SHAPES`.
    pub shape: usize,
    /// Index into `COLOURS`.
    pub colour: usize,
    /// Index into `SIZE_WORDS`.
    pub size_class: usize,
    /// Radius, fraction of the image width.
    pub size: f32,
    /// Centre, fractions of the image width and height.
    pub x: f32,
    pub y: f32,
    /// Radians; circles and rings look the same at any rotation.
    pub rotation: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub background: Background,
    /// Back to front.
    pub objects: Vec<Object>,
    /// Fraction of each object's pixels that no later object covers (filled in by rendering at
    /// the world's size; 1 when nothing overlaps).
    pub visible: Vec<f32>,
}

impl Scene {
    /// Draws a scene from stimulus `index`'s stream. Objects never share both shape and colour
    /// (so captions can name each one), and are resampled until each keeps at least a quarter of
    /// its area visible (checked by the caller through `visible`, see `synth::make_stimulus`).
    pub fn sample(seed: u64, index: u64, attempt: u64) -> Scene {
        let mut rng = Rng::stream(
            seed,
            stage::SCENE,
            index.wrapping_mul(64).wrapping_add(attempt),
        );
        let kind = match rng.below(3) {
            0 => BackgroundKind::Flat,
            1 => BackgroundKind::Gradient,
            _ => BackgroundKind::Texture(
                [Texture::Stripes, Texture::Checker, Texture::Dots][rng.below(3)],
            ),
        };
        let colour_a = rng.below(BACKGROUND_COLOURS.len());
        let colour_b = if kind == BackgroundKind::Flat {
            colour_a
        } else {
            (colour_a + 1 + rng.below(BACKGROUND_COLOURS.len() - 1)) % BACKGROUND_COLOURS.len()
        };
        let background = Background {
            kind,
            colour_a,
            colour_b,
            angle: rng.uniform(0.0, std::f32::consts::PI),
            period: rng.uniform(0.08, 0.2),
        };

        let count = 1 + rng.below(MAX_OBJECTS);
        let mut objects: Vec<Object> = Vec::with_capacity(count);
        while objects.len() < count {
            let shape = rng.below(SHAPES.len());
            let colour = rng.below(COLOURS.len());
            if objects
                .iter()
                .any(|o| o.shape == shape && o.colour == colour)
            {
                continue;
            }
            let size_class = rng.below(3);
            let (lo, hi) = SIZE_RANGES[size_class];
            let size = rng.uniform(lo, hi);
            let margin = size + 0.02;
            objects.push(Object {
                shape,
                colour,
                size_class,
                size,
                x: rng.uniform(margin, 1.0 - margin),
                y: rng.uniform(margin, 1.0 - margin),
                rotation: rng.uniform(0.0, std::f32::consts::TAU),
            });
        }
        let visible = vec![1.0; objects.len()];
        Scene {
            background,
            objects,
            visible,
        }
    }

    /// Mean background colour in [0, 1] (what a large receptive field would see behind objects).
    pub fn background_mean(&self) -> [f32; 3] {
        let a = BACKGROUND_COLOURS[self.background.colour_a].1;
        let b = BACKGROUND_COLOURS[self.background.colour_b].1;
        // Gradients and textures are about half each colour (dots cover less; close enough).
        let w = if self.background.kind == BackgroundKind::Flat {
            0.0
        } else {
            0.5
        };
        [0, 1, 2].map(|c| ((1.0 - w) * a[c] as f32 + w * b[c] as f32) / 255.0)
    }
}

/// Names of the ground-truth feature vector's entries (the `columns` of `scene/features`).
pub fn feature_names() -> Vec<String> {
    let mut n: Vec<String> = Vec::new();
    n.extend(BACKGROUND_KINDS.iter().map(|k| format!("background_{k}")));
    n.extend(TEXTURES.iter().map(|t| format!("texture_{t}")));
    n.extend(["background_r", "background_g", "background_b"].map(String::from));
    n.extend((1..=MAX_OBJECTS).map(|c| format!("count_{c}")));
    n.extend(SHAPES.iter().map(|s| format!("has_{s}")));
    n.extend(COLOURS.iter().map(|(c, _)| format!("has_{c}")));
    for (c, _) in COLOURS {
        n.extend(SHAPES.iter().map(|s| format!("has_{c}_{s}")));
    }
    n.extend(
        [
            "largest_x",
            "largest_y",
            "largest_size",
            "mean_x",
            "mean_y",
            "object_area",
        ]
        .map(String::from),
    );
    n
}

/// Length of `features`.
pub fn feature_count() -> usize {
    3 + 3 + 3 + MAX_OBJECTS + SHAPES.len() + COLOURS.len() + COLOURS.len() * SHAPES.len() + 6
}

/// The ground-truth description of a scene as numbers in [0, 1]: what a good decoder should
/// recover from the brain (binary facts, background colour, where the biggest object is).
/// Order as `feature_names`.
pub fn features(scene: &Scene) -> Vec<f32> {
    let mut f = Vec::with_capacity(feature_count());
    let bg = &scene.background;
    let onehot = |k: usize, n: usize| (0..n).map(move |i| if i == k { 1.0 } else { 0.0 });
    let (kind, texture) = match bg.kind {
        BackgroundKind::Flat => (0, None),
        BackgroundKind::Gradient => (1, None),
        BackgroundKind::Texture(t) => (2, Some(t as usize)),
    };
    f.extend(onehot(kind, 3));
    f.extend((0..3).map(|i| if texture == Some(i) { 1.0 } else { 0.0 }));
    f.extend(scene.background_mean());
    f.extend(onehot(scene.objects.len() - 1, MAX_OBJECTS));
    f.extend((0..SHAPES.len()).map(|s| scene.objects.iter().any(|o| o.shape == s) as u8 as f32));
    f.extend((0..COLOURS.len()).map(|c| scene.objects.iter().any(|o| o.colour == c) as u8 as f32));
    for c in 0..COLOURS.len() {
        f.extend(
            (0..SHAPES.len())
                .map(|s| scene.objects.iter().any(|o| o.shape == s && o.colour == c) as u8 as f32),
        );
    }
    let largest = scene.objects.iter().fold(
        &scene.objects[0],
        |a, o| if o.size > a.size { o } else { a },
    );
    let n = scene.objects.len() as f32;
    f.extend([largest.x, largest.y, largest.size / SIZE_RANGES[2].1]);
    f.push(scene.objects.iter().map(|o| o.x).sum::<f32>() / n);
    f.push(scene.objects.iter().map(|o| o.y).sum::<f32>() / n);
    // Visible area of all objects, relative to the largest possible single object.
    let area: f32 = scene
        .objects
        .iter()
        .zip(&scene.visible)
        .map(|(o, v)| o.size * o.size * v)
        .sum();
    f.push((area / (SIZE_RANGES[2].1 * SIZE_RANGES[2].1)).min(1.0));
    debug_assert_eq!(f.len(), feature_count());
    f
}

/// Width of `targets/scene`.
pub const SCENE_TARGET_DIM: usize = 512;

/// The seed of the fixed projection behind `targets/scene`. A constant, not the world's seed:
/// the same scene maps to the same vector in every world, like a frozen CLIP would.
const PROJECTION_SEED: u64 = 0x5CE4E_7A26E7;

/// The fixed `[feature_count, 512]` Gaussian projection.
pub fn scene_projection() -> Vec<f32> {
    let f = feature_count();
    let mut p = vec![0f32; f * SCENE_TARGET_DIM];
    for (i, row) in p.chunks_mut(SCENE_TARGET_DIM).enumerate() {
        Rng::stream(PROJECTION_SEED, stage::TARGET_PROJECTION, i as u64).fill_normal(row);
    }
    p
}

/// `targets/scene` for one scene: the unit vector `normalize(Pᵀ d)`, where `d` is `features`
/// with continuous entries centred on 0 (binary facts stay 0/1 so absent things add nothing).
pub fn scene_target(features: &[f32], projection: &[f32]) -> Vec<f32> {
    let names_continuous = 6..9; // background colour
    let tail = features.len() - 6..features.len(); // positions, sizes, area
    let mut e = vec![0f64; SCENE_TARGET_DIM];
    for (i, &x) in features.iter().enumerate() {
        let d = if names_continuous.contains(&i) || tail.contains(&i) {
            2.0 * (x - 0.5)
        } else {
            x
        };
        if d != 0.0 {
            for (acc, &p) in e
                .iter_mut()
                .zip(&projection[i * SCENE_TARGET_DIM..][..SCENE_TARGET_DIM])
            {
                *acc += d as f64 * p as f64;
            }
        }
    }
    let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    e.iter().map(|x| (x / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_features() {
        let s = Scene::sample(1, 0, 0);
        assert_eq!(features(&s).len(), feature_names().len());
        assert_eq!(feature_count(), feature_names().len());
    }

    #[test]
    fn scenes_follow_the_rules() {
        for i in 0..500 {
            let s = Scene::sample(5, i, 0);
            assert!((1..=MAX_OBJECTS).contains(&s.objects.len()));
            for (a, o) in s.objects.iter().enumerate() {
                assert!(
                    o.x - o.size > 0.0
                        && o.x + o.size < 1.0
                        && o.y - o.size > 0.0
                        && o.y + o.size < 1.0
                );
                assert!(s.objects[..a]
                    .iter()
                    .all(|p| (p.shape, p.colour) != (o.shape, o.colour)));
            }
            if s.background.kind != BackgroundKind::Flat {
                assert_ne!(s.background.colour_a, s.background.colour_b);
            }
        }
    }

    #[test]
    fn scene_targets_are_unit_and_distinguish_scenes() {
        let p = scene_projection();
        let a = scene_target(&features(&Scene::sample(1, 0, 0)), &p);
        let b = scene_target(&features(&Scene::sample(1, 1, 0)), &p);
        let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((a.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(dot < 0.95, "two different scenes gave cosine {dot}");
        assert_eq!(a, scene_target(&features(&Scene::sample(1, 0, 0)), &p));
    }
}
