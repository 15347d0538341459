//! CLIP's shape, read from a Hugging Face `config.json` (`CLIPConfig`).
//!
//! `save_pretrained` writes only the values that differ from the class defaults (also inside
//! `text_config` and `vision_config`), so a missing key means transformers' default — the
//! defaults below are `CLIPTextConfig`'s and `CLIPVisionConfig`'s (transformers 4.46), which are
//! ViT-B/32's. Any ViT-B/32, B/16 or L/14-shaped config loads; the activation must be quick_gelu.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// One tower's transformer: width, depth, heads, MLP width, layer-norm eps.
#[derive(Clone, Debug, PartialEq)]
pub struct TowerConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub layer_norm_eps: f32,
}

impl TowerConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub tower: TowerConfig,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
}

impl VisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Tokens: the class token and one per patch.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub tower: TowerConfig,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    /// Width of the joint embedding space (both projections' output).
    pub projection_dim: usize,
}

/// Reads `key` of `obj` as a positive integer, or `default` when absent.
fn usize_or(obj: &Value, section: &str, key: &str, default: usize, path: &Path) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| {
                Error::file(
                    path,
                    format!(
                        "unsupported config: {section}{key} = {v} (expected a positive integer)"
                    ),
                )
            }),
    }
}

fn f32_or(obj: &Value, section: &str, key: &str, default: f32, path: &Path) -> Result<f32> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().map(|x| x as f32).ok_or_else(|| {
            Error::file(
                path,
                format!("unsupported config: {section}{key} = {v} (expected a number)"),
            )
        }),
    }
}

/// The tower's fields, with `defaults` = (hidden, intermediate, heads, layers).
fn tower(
    obj: &Value,
    section: &str,
    defaults: (usize, usize, usize, usize),
    path: &Path,
) -> Result<TowerConfig> {
    let act = obj
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("quick_gelu");
    if act != "quick_gelu" {
        return Err(Error::file(path, format!("unsupported config: {section}hidden_act is \"{act}\"; only quick_gelu (OpenAI CLIP) is implemented")));
    }
    let t = TowerConfig {
        hidden_size: usize_or(obj, section, "hidden_size", defaults.0, path)?,
        intermediate_size: usize_or(obj, section, "intermediate_size", defaults.1, path)?,
        num_attention_heads: usize_or(obj, section, "num_attention_heads", defaults.2, path)?,
        num_hidden_layers: usize_or(obj, section, "num_hidden_layers", defaults.3, path)?,
        layer_norm_eps: f32_or(obj, section, "layer_norm_eps", 1e-5, path)?,
    };
    if t.hidden_size % t.num_attention_heads != 0 {
        return Err(Error::file(
            path,
            format!("unsupported config: {section}hidden_size {} is not a multiple of num_attention_heads {}", t.hidden_size, t.num_attention_heads),
        ));
    }
    Ok(t)
}

impl ClipConfig {
    /// Parses a `CLIPConfig` JSON document; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<ClipConfig> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| Error::file(path, format!("not valid JSON: {e}")))?;
        if let Some(mt) = root.get("model_type").and_then(Value::as_str) {
            if mt != "clip" {
                return Err(Error::file(path, format!("unsupported config: model_type is \"{mt}\", expected \"clip\" (a CLIPModel directory)")));
            }
        }
        let empty = Value::Object(Default::default());
        let v = root.get("vision_config").unwrap_or(&empty);
        let t = root.get("text_config").unwrap_or(&empty);
        let vision = VisionConfig {
            tower: tower(v, "vision_config.", (768, 3072, 12, 12), path)?,
            image_size: usize_or(v, "vision_config.", "image_size", 224, path)?,
            patch_size: usize_or(v, "vision_config.", "patch_size", 32, path)?,
            num_channels: usize_or(v, "vision_config.", "num_channels", 3, path)?,
        };
        if vision.image_size % vision.patch_size != 0 {
            return Err(Error::file(
                path,
                format!("unsupported config: vision_config.image_size {} is not a multiple of patch_size {}", vision.image_size, vision.patch_size),
            ));
        }
        let text = TextConfig {
            tower: tower(t, "text_config.", (512, 2048, 8, 12), path)?,
            vocab_size: usize_or(t, "text_config.", "vocab_size", 49408, path)?,
            max_position_embeddings: usize_or(
                t,
                "text_config.",
                "max_position_embeddings",
                77,
                path,
            )?,
        };
        let projection_dim = usize_or(&root, "", "projection_dim", 512, path)?;
        Ok(ClipConfig {
            vision,
            text,
            projection_dim,
        })
    }

    /// Reads `config.json`.
    pub fn load(path: &Path) -> Result<ClipConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("reading the CLIP config: {e}")))?;
        ClipConfig::from_json(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_is_vit_b_32() {
        let c = ClipConfig::from_json("{}", Path::new("config.json")).unwrap();
        assert_eq!(
            (
                c.vision.tower.hidden_size,
                c.vision.patch_size,
                c.vision.num_positions()
            ),
            (768, 32, 50)
        );
        assert_eq!(
            (
                c.text.tower.hidden_size,
                c.text.tower.num_attention_heads,
                c.text.vocab_size
            ),
            (512, 8, 49408)
        );
        assert_eq!(c.projection_dim, 512);
    }

    #[test]
    fn l14_shape_reads_from_the_config_alone() {
        let json = r#"{"model_type":"clip","projection_dim":768,
            "text_config":{"hidden_size":768,"intermediate_size":3072,"num_attention_heads":12},
            "vision_config":{"hidden_size":1024,"intermediate_size":4096,"num_attention_heads":16,"num_hidden_layers":24,"patch_size":14}}"#;
        let c = ClipConfig::from_json(json, Path::new("c.json")).unwrap();
        assert_eq!(
            (
                c.vision.grid(),
                c.vision.tower.head_dim(),
                c.vision.tower.num_hidden_layers
            ),
            (16, 64, 24)
        );
        assert_eq!(c.text.tower.head_dim(), 64);
    }

    #[test]
    fn unsupported_configs_are_named() {
        let p = Path::new("dir/config.json");
        let err = ClipConfig::from_json(r#"{"text_config":{"hidden_act":"gelu"}}"#, p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unsupported config")
                && err.contains("text_config.hidden_act")
                && err.contains("dir/config.json"),
            "{err}"
        );
        let err = ClipConfig::from_json(
            r#"{"vision_config":{"hidden_size":100,"num_attention_heads":12}}"#,
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a multiple"), "{err}");
        assert!(ClipConfig::from_json(r#"{"model_type":"siglip"}"#, p)
            .unwrap_err()
            .to_string()
            .contains("siglip"));
        assert!(ClipConfig::from_json("{", p)
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
    }
}
