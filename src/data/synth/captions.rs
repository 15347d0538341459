//! Five captions per synthetic image, written from the scene itself: faithful paraphrases in
//! different templates and word choices, plus one or two deliberately poor ones (a wrong colour,
//! shape or count, or a vague phrase) so that caption screening has something to reject. Which
//! slots are poor is recorded as ground truth (`scene/caption_ok`).

use super::scene::{
    BackgroundKind, Object, Scene, Texture, BACKGROUND_COLOURS, COLOURS, SHAPES, SIZE_WORDS,
};
use crate::rng::{stage, Rng};

pub const CAPTIONS_PER_IMAGE: usize = 5;

/// Alternative nouns for each shape (the first is the canonical name).
const SHAPE_WORDS: [&[&str]; 6] = [
    &["circle", "disc", "round dot"],
    &["square", "box"],
    &["triangle"],
    &["diamond", "rhombus"],
    &["cross", "plus sign"],
    &["ring", "hoop", "circle outline"],
];

const VAGUE: [&str; 5] = [
    "some shapes on a background",
    "an abstract picture",
    "a simple image with a few things in it",
    "colourful geometry",
    "a picture",
];

const COUNT_WORDS: [&str; 3] = ["one", "two", "three"];

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// "a small red circle": the size word for small and large objects (sometimes for medium).
fn noun_phrase(o: &Object, colour: usize, shape: usize, rng: &mut Rng) -> String {
    let words = SHAPE_WORDS[shape];
    let noun = words[rng.below(words.len())];
    let size = match o.size_class {
        1 if rng.chance(0.7) => None,
        c => Some(SIZE_WORDS[c]),
    };
    let body = match size {
        Some(s) => format!("{s} {} {noun}", COLOURS[colour].0),
        None => format!("{} {noun}", COLOURS[colour].0),
    };
    format!("{} {body}", article(&body))
}

/// Where `b` is relative to `a` ("left of" means b's centre is left of a's), and whether one
/// hides the other.
fn relation(a: &Object, b: &Object, b_covers_a: bool) -> &'static str {
    if b_covers_a {
        return "in front of";
    }
    let (dx, dy) = (b.x - a.x, b.y - a.y);
    if dx.abs() >= dy.abs() {
        if dx < 0.0 {
            "left of"
        } else {
            "right of"
        }
    } else if dy < 0.0 {
        "above"
    } else {
        "below"
    }
}

/// The background as a noun phrase: "a striped background", "a beige to navy gradient".
fn background_noun(scene: &Scene, rng: &mut Rng) -> String {
    let bg = &scene.background;
    let (a, b) = (
        BACKGROUND_COLOURS[bg.colour_a].0,
        BACKGROUND_COLOURS[bg.colour_b].0,
    );
    let options: Vec<String> = match bg.kind {
        BackgroundKind::Flat => vec![
            format!("a plain {a} background"),
            format!("a {a} backdrop"),
            format!("a {a} background"),
        ],
        BackgroundKind::Gradient => vec![
            format!("a {a} to {b} gradient"),
            format!("a background fading from {a} to {b}"),
            "a gradient".into(),
        ],
        BackgroundKind::Texture(Texture::Stripes) => vec![
            "a striped background".into(),
            format!("{a} and {b} stripes"),
            "stripes".into(),
        ],
        BackgroundKind::Texture(Texture::Checker) => vec![
            "a checkered background".into(),
            format!("a {a} and {b} checkerboard"),
            "a chequered pattern".into(),
        ],
        BackgroundKind::Texture(Texture::Dots) => vec![
            "a polka-dot background".into(),
            format!("{a} with {b} dots"),
            "a dotted background".into(),
        ],
    };
    options[rng.below(options.len())].clone()
}

/// "on a striped background", "against a grey backdrop".
fn background_phrase(scene: &Scene, rng: &mut Rng) -> String {
    let prep = ["on", "on", "against", "over"][rng.below(4)];
    format!("{prep} {}", background_noun(scene, rng))
}

/// The objects as the captions see them: noun phrases, possibly with one fact falsified.
struct Phrases {
    objects: Vec<String>,
    relation: Option<&'static str>,
}

fn phrases(scene: &Scene, rng: &mut Rng, lie: Option<Lie>) -> Phrases {
    let n = scene.objects.len();
    let liar = rng.below(n);
    let objects = scene
        .objects
        .iter()
        .enumerate()
        .map(|(k, o)| {
            let (mut colour, mut shape) = (o.colour, o.shape);
            if k == liar {
                match lie {
                    // A colour no object in the scene has, so the caption is plainly wrong.
                    Some(Lie::Colour) => {
                        colour = pick_absent(rng, COLOURS.len(), |c| {
                            scene.objects.iter().any(|p| p.colour == c)
                        })
                    }
                    Some(Lie::Shape) => {
                        shape = pick_absent(rng, SHAPES.len(), |s| {
                            scene.objects.iter().any(|p| p.shape == s)
                        })
                    }
                    _ => {}
                }
            }
            noun_phrase(o, colour, shape, rng)
        })
        .collect();
    // The relation of the second object to the first; "in front of" when it hides a good part.
    let relation = (n >= 2).then(|| {
        let covers = scene.visible[0] < 0.8 && overlaps(&scene.objects[0], &scene.objects[1]);
        relation(&scene.objects[0], &scene.objects[1], covers)
    });
    Phrases { objects, relation }
}

fn overlaps(a: &Object, b: &Object) -> bool {
    (a.x - b.x).hypot(a.y - b.y) < a.size + b.size
}

fn pick_absent(rng: &mut Rng, n: usize, present: impl Fn(usize) -> bool) -> usize {
    let free: Vec<usize> = (0..n).filter(|&i| !present(i)).collect();
    free[rng.below(free.len())]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lie {
    Colour,
    Shape,
    Count,
    Vague,
}

fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [a, b] => format!("{a} and {b}"),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// One caption in template `t` (0..5); all five templates are faithful given faithful phrases.
fn template(t: usize, scene: &Scene, p: &Phrases, rng: &mut Rng, count_word: &str) -> String {
    let bg = background_phrase(scene, rng);
    let o = &p.objects;
    match (t, p.relation) {
        // "a small red circle left of a large blue square on a striped background"
        (0, Some(rel)) if o.len() == 2 => format!("{} {rel} {} {bg}", o[1], o[0]),
        (0, _) => format!("{} {bg}", list(o)),
        // "there is a large blue square, and a small red circle to its left"
        (1, Some(rel)) if rel != "in front of" => {
            let where_ = match rel {
                "left of" => "to its left",
                "right of" => "to its right",
                "above" => "above it",
                _ => "below it",
            };
            let rest = if o.len() == 3 {
                format!(", plus {}", o[2])
            } else {
                String::new()
            };
            format!("there is {}, and {} {where_}{rest}", o[0], o[1])
        }
        (1, Some(_)) => {
            let rest = if o.len() == 3 {
                format!(" and {}", o[2])
            } else {
                String::new()
            };
            format!("{} partly hidden behind {}{rest}, {bg}", o[0], o[1])
        }
        (1, None) => format!("there is {} {bg}", o[0]),
        // "two shapes, a red circle and a blue square, on stripes"
        (2, _) if o.len() > 1 => format!("{count_word} shapes, {}, {bg}", list(o)),
        (2, _) => format!("a single shape, {}, {bg}", o[0]),
        (3, _) => format!("a picture of {} {bg}", list(o)),
        // "a striped background with a red circle and a blue square"
        _ => format!("{} with {}", background_noun(scene, rng), list(o)),
    }
}

/// The five captions of `scene` and, for each, whether it is faithful.
pub fn captions(scene: &Scene, seed: u64, index: u64) -> (Vec<String>, Vec<bool>) {
    let mut rng = Rng::stream(seed, stage::CAPTIONS, index);
    let poor = 1 + rng.below(2);
    let mut slots: Vec<usize> = (0..CAPTIONS_PER_IMAGE).collect();
    rng.shuffle(&mut slots);
    let mut templates: Vec<usize> = (0..5).collect();
    rng.shuffle(&mut templates);
    let n = scene.objects.len();
    let mut out = vec![String::new(); CAPTIONS_PER_IMAGE];
    let mut ok = vec![true; CAPTIONS_PER_IMAGE];
    for (j, &slot) in slots.iter().enumerate() {
        let lie =
            (j < poor).then(|| [Lie::Colour, Lie::Shape, Lie::Count, Lie::Vague][rng.below(4)]);
        let text = match lie {
            Some(Lie::Vague) => VAGUE[rng.below(VAGUE.len())].to_string(),
            Some(Lie::Count) => {
                let wrong = (n + rng.below(COUNT_WORDS.len() - 1)) % COUNT_WORDS.len();
                let p = phrases(scene, &mut rng, None);
                let bg = background_phrase(scene, &mut rng);
                match wrong {
                    0 => format!("a single shape, {}, {bg}", p.objects[0]),
                    _ => format!(
                        "{} shapes {bg}, among them {}",
                        COUNT_WORDS[wrong], p.objects[0]
                    ),
                }
            }
            _ => {
                let p = phrases(scene, &mut rng, lie);
                template(templates[j], scene, &p, &mut rng, COUNT_WORDS[n - 1])
            }
        };
        ok[slot] = lie.is_none();
        out[slot] = text;
    }
    (out, ok)
}

#[cfg(test)]
mod tests {
    use super::super::scene::Scene;
    use super::*;

    #[test]
    fn five_captions_with_one_or_two_poor_ones() {
        for i in 0..300 {
            let s = Scene::sample(3, i, 0);
            let (caps, ok) = captions(&s, 3, i);
            assert_eq!(caps.len(), 5);
            let poor = ok.iter().filter(|&&g| !g).count();
            assert!((1..=2).contains(&poor), "{poor} poor captions");
            for (c, &good) in caps.iter().zip(&ok) {
                assert!(!c.is_empty() && !c.contains("  "), "{c:?}");
                if good {
                    // A faithful caption names every object's colour.
                    for o in &s.objects {
                        assert!(
                            c.contains(COLOURS[o.colour].0),
                            "{c:?} misses {}",
                            COLOURS[o.colour].0
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn captions_are_deterministic() {
        let s = Scene::sample(9, 4, 0);
        assert_eq!(captions(&s, 9, 4), captions(&s, 9, 4));
    }
}
