//! The networks' shapes, read from the reference constructors' own keyword arguments
//! (`init_kwargs`: what `training/networks.py`'s `Generator(...)` and `Discriminator(...)` were
//! built with), so a checkpoint converted from the reference loads with no other information.
//!
//! Every key is either interpreted, accepted because it changes nothing here (each with its
//! reason below), or refused: a checkpoint whose network this code would not reproduce is an
//! error naming the key, never a silently different network.

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::nn::Conditioning;

/// Keys the reference passes that do not change the f32 network computed here.
const HARMLESS: &[(&str, &str)] = &[
    (
        "class_name",
        "names the class, which the metadata's `class` already says",
    ),
    (
        "m_num_layers",
        "unused by the reference (\"no use at all\")",
    ),
    (
        "change",
        "computed and discarded by the reference's SynthesisNetwork",
    ),
    (
        "num_fp16_res",
        "mixed precision only: this engine runs these networks in f32",
    ),
    (
        "fp16_channels_last",
        "a memory layout, not a different network",
    ),
    ("channels_last", "a memory layout, not a different network"),
    (
        "freeze_layers",
        "training only (Freeze-D): the forward is unchanged",
    ),
    (
        "mapping_kwargs",
        "the discriminator's label mapping, unused with c_dim = 0",
    ),
    (
        "cmap_dim",
        "the label projection's width, unused with c_dim = 0",
    ),
];

/// A JSON object of keyword arguments, read key by key; `finish` refuses what was not read.
struct Kwargs<'a> {
    what: String,
    obj: &'a Map<String, Value>,
    read: Vec<&'a str>,
}

impl<'a> Kwargs<'a> {
    fn new(what: &str, v: &'a Value) -> Result<Kwargs<'a>> {
        match v {
            Value::Object(obj) => Ok(Kwargs {
                what: what.to_string(),
                obj,
                read: Vec::new(),
            }),
            other => Err(Error::Invalid(format!(
                "{what} must be a JSON object, got {other}"
            ))),
        }
    }

    fn get(&mut self, key: &'a str) -> Option<&'a Value> {
        self.read.push(key);
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn usize_or(&mut self, key: &'a str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.bad(key, v, "a non-negative integer")),
        }
    }

    fn usize(&mut self, key: &'a str) -> Result<usize> {
        match self.get(key) {
            None => Err(Error::Invalid(format!("{}: `{key}` is missing", self.what))),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.bad(key, v, "a non-negative integer")),
        }
    }

    fn f32_opt(&mut self, key: &'a str, default: Option<f32>) -> Result<Option<f32>> {
        match self.obj.get(key) {
            None => {
                self.read.push(key);
                Ok(default)
            }
            Some(Value::Null) => {
                self.read.push(key);
                Ok(None)
            }
            Some(v) => {
                self.read.push(key);
                v.as_f64()
                    .map(|x| Some(x as f32))
                    .ok_or_else(|| self.bad(key, v, "a number or null"))
            }
        }
    }

    fn bool_or(&mut self, key: &'a str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(key, v, "true or false")),
        }
    }

    /// A key whose only supported value is `want` (the reference's default).
    fn only(&mut self, key: &'a str, want: Value) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if *v == want => Ok(()),
            Some(v) => Err(Error::Invalid(format!(
                "{}: `{key}` = {v} is not supported (only {want}): this network would differ from the reference's",
                self.what
            ))),
        }
    }

    fn object(&mut self, key: &'a str) -> Result<Kwargs<'a>> {
        static EMPTY: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
        let empty = EMPTY.get_or_init(|| json!({}));
        let what = format!("{}.{key}", self.what);
        match self.get(key) {
            None => Kwargs::new(&what, empty),
            Some(v) => Kwargs::new(&what, v),
        }
    }

    fn bad(&self, key: &str, v: &Value, want: &str) -> Error {
        Error::Invalid(format!("{}: `{key}` = {v}, expected {want}", self.what))
    }

    /// Refuses every key neither read nor known to be harmless.
    fn finish(self) -> Result<()> {
        for key in self.obj.keys() {
            if !self.read.contains(&key.as_str()) && !HARMLESS.iter().any(|(k, _)| k == key) {
                return Err(Error::Invalid(format!(
                    "{}: unknown keyword argument `{key}` = {}: refusing to guess what it changes",
                    self.what, self.obj[key]
                )));
            }
        }
        Ok(())
    }
}

fn power_of_two(what: &str, r: usize) -> Result<usize> {
    if r < 4 || !r.is_power_of_two() {
        return Err(Error::Invalid(format!(
            "{what}: img_resolution {r} must be a power of two, at least 4"
        )));
    }
    Ok(r)
}

fn structure(what: &str, s: usize, f_dim2: usize) -> Result<u32> {
    match s {
        2 => Ok(2),
        4 if f_dim2 > 0 => Ok(4),
        4 => Err(Error::Invalid(format!(
            "{what}: structure 4 needs f_dim2 > 0"
        ))),
        other => Err(Error::Invalid(format!(
            "{what}: conditioning structure {other} is not supported (2: one condition, 4: two)"
        ))),
    }
}

/// `min(channel_base / res, channel_max)`, the reference's channels per resolution.
pub fn channels(base: usize, max: usize, res: usize) -> usize {
    (base / res).min(max)
}

/// The generator's shape (the mind-reader fork's `Generator(**init_kwargs)`).
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorConfig {
    pub z_dim: usize,
    pub w_dim: usize,
    pub img_resolution: usize,
    pub img_channels: usize,
    /// The width of the random unit condition the reference draws when `fts` is None.
    pub m_layer_features: usize,
    pub mapping_layers: usize,
    pub mapping_layer_features: usize,
    pub mapping_lr_multiplier: f32,
    pub w_avg_beta: f32,
    pub channel_base: usize,
    pub channel_max: usize,
    pub conv_clamp: Option<f32>,
    pub structure: u32,
    pub f_dim: usize,
    pub f_dim2: usize,
    /// The learning-rate multiplier of every layer's conditioning MLPs (`pre_0`, `pre_1`, …): the
    /// fork's 0.01 unless `synthesis_kwargs.cond_lr_multiplier` (mindreader's, not the fork's)
    /// says otherwise.
    pub condition_lr_multiplier: f32,
    /// The constructor's arguments as given (written back into saved checkpoints).
    pub init_kwargs: Value,
}

impl GeneratorConfig {
    pub fn from_init_kwargs(v: &Value) -> Result<GeneratorConfig> {
        let mut k = Kwargs::new("Generator init_kwargs", v)?;
        let z_dim = k.usize("z_dim")?;
        let w_dim = k.usize("w_dim")?;
        if k.usize_or("c_dim", 0)? != 0 {
            return Err(Error::Invalid(
                "Generator init_kwargs: c_dim must be 0 (Mind Reader has no class labels; the condition enters as fts)".into(),
            ));
        }
        let img_resolution = power_of_two("Generator init_kwargs", k.usize("img_resolution")?)?;
        let img_channels = k.usize_or("img_channels", 3)?;
        let m_layer_features = k.usize_or("m_layer_features", 512)?;
        let mut m = k.object("mapping_kwargs")?;
        let mapping_layers = m.usize_or("num_layers", 8)?;
        let mapping_layer_features = m.usize_or("layer_features", w_dim)?;
        let mapping_lr_multiplier = m.f32_opt("lr_multiplier", Some(0.01))?.unwrap_or(0.01);
        let w_avg_beta = m.f32_opt("w_avg_beta", Some(0.995))?.unwrap_or(0.995);
        m.only("activation", json!("lrelu"))?;
        m.get("embed_features"); // only with c_dim > 0
        m.finish()?;
        let mut s = k.object("synthesis_kwargs")?;
        let channel_base = s.usize_or("channel_base", 32768)?;
        let channel_max = s.usize_or("channel_max", 512)?;
        let conv_clamp = s.f32_opt("conv_clamp", None)?;
        let f_dim = s.usize_or("f_dim", 512)?;
        let f_dim2 = s.usize_or("f_dim2", 512)?;
        let condition_lr_multiplier = s.f32_opt("cond_lr_multiplier", Some(0.01))?.unwrap_or(0.01);
        if !(condition_lr_multiplier > 0.0) {
            return Err(Error::Invalid(format!(
                "Generator init_kwargs: synthesis_kwargs.cond_lr_multiplier must be positive, got {condition_lr_multiplier}"
            )));
        }
        let st = s.usize_or("structure", 2)?;
        let structure = structure("Generator init_kwargs", st, f_dim2)?;
        s.only("architecture", json!("skip"))?;
        s.only("resample_filter", json!([1, 3, 3, 1]))?;
        s.only("kernel_size", json!(3))?;
        s.only("use_noise", json!(true))?;
        s.only("activation", json!("lrelu"))?;
        s.finish()?;
        k.finish()?;
        if mapping_layers == 0 || z_dim == 0 || w_dim == 0 {
            return Err(Error::Invalid(format!(
                "Generator init_kwargs: z_dim {z_dim}, w_dim {w_dim} and mapping num_layers {mapping_layers} must be positive"
            )));
        }
        Ok(GeneratorConfig {
            z_dim,
            w_dim,
            img_resolution,
            img_channels,
            m_layer_features,
            mapping_layers,
            mapping_layer_features,
            mapping_lr_multiplier,
            w_avg_beta,
            channel_base,
            channel_max,
            conv_clamp,
            structure,
            f_dim,
            f_dim2: if structure == 4 { f_dim2 } else { 0 },
            condition_lr_multiplier,
            init_kwargs: v.clone(),
        })
    }

    /// How every synthesis layer and ToRGB reads the condition.
    pub fn conditioning(&self) -> Conditioning {
        Conditioning {
            structure: self.structure,
            f_dim: self.f_dim,
            f_dim2: self.f_dim2,
            lr_multiplier: self.condition_lr_multiplier,
        }
    }

    /// The block resolutions 4, 8, …, img_resolution.
    pub fn resolutions(&self) -> Vec<usize> {
        (2..=self.img_resolution.trailing_zeros())
            .map(|i| 1 << i)
            .collect()
    }

    pub fn channels(&self, res: usize) -> usize {
        channels(self.channel_base, self.channel_max, res)
    }

    /// 2·log2(R) − 2: one w per convolution, plus the last ToRGB's.
    pub fn num_ws(&self) -> usize {
        2 * self.img_resolution.trailing_zeros() as usize - 2
    }

    /// The width of the `fts` condition: F, or F + F2 for structure 4.
    pub fn fts_width(&self) -> usize {
        self.f_dim + self.f_dim2
    }
}

/// The discriminator's shape (the fork's `Discriminator(**init_kwargs)`, resnet architecture).
#[derive(Clone, Debug, PartialEq)]
pub struct DiscriminatorConfig {
    pub img_resolution: usize,
    pub img_channels: usize,
    pub channel_base: usize,
    pub channel_max: usize,
    pub conv_clamp: Option<f32>,
    pub use_norm: bool,
    pub structure: u32,
    pub mbstd_group_size: usize,
    pub mbstd_num_channels: usize,
    pub f_dim: usize,
    pub f_dim2: usize,
    pub init_kwargs: Value,
}

impl DiscriminatorConfig {
    pub fn from_init_kwargs(v: &Value) -> Result<DiscriminatorConfig> {
        const WHAT: &str = "Discriminator init_kwargs";
        let mut k = Kwargs::new(WHAT, v)?;
        if k.usize_or("c_dim", 0)? != 0 {
            return Err(Error::Invalid(format!(
                "{WHAT}: c_dim must be 0 (no class labels)"
            )));
        }
        let img_resolution = power_of_two(WHAT, k.usize("img_resolution")?)?;
        if img_resolution < 8 {
            return Err(Error::Invalid(format!(
                "{WHAT}: img_resolution must be at least 8"
            )));
        }
        let img_channels = k.usize_or("img_channels", 3)?;
        k.only("architecture", json!("resnet"))?;
        let channel_base = k.usize_or("channel_base", 32768)?;
        let channel_max = k.usize_or("channel_max", 512)?;
        let conv_clamp = k.f32_opt("conv_clamp", None)?;
        let use_norm = k.bool_or("use_norm", false)?;
        if !k.bool_or("use_fts", true)? {
            return Err(Error::Invalid(format!(
                "{WHAT}: use_fts = false is not supported (the reference's forward needs the semantic head)"
            )));
        }
        let mut b = k.object("block_kwargs")?;
        b.only("activation", json!("lrelu"))?;
        b.only("resample_filter", json!([1, 3, 3, 1]))?;
        b.finish()?;
        let mut e = k.object("epilogue_kwargs")?;
        let f_dim = e.usize_or("f_dim", 512)?;
        let f_dim2 = e.usize_or("f_dim2", 512)?;
        let structure = structure(WHAT, e.usize_or("structure", 2)?, f_dim2)?;
        let mbstd_group_size = e.usize_or("mbstd_group_size", 4)?;
        let mbstd_num_channels = e.usize_or("mbstd_num_channels", 1)?;
        e.only("activation", json!("lrelu"))?;
        e.finish()?;
        k.finish()?;
        if mbstd_num_channels == 0 || mbstd_group_size == 0 {
            return Err(Error::Invalid(format!(
                "{WHAT}: the minibatch-stddev layer needs a group size and channels (got {mbstd_group_size}, {mbstd_num_channels})"
            )));
        }
        Ok(DiscriminatorConfig {
            img_resolution,
            img_channels,
            channel_base,
            channel_max,
            conv_clamp,
            use_norm,
            structure,
            mbstd_group_size,
            mbstd_num_channels,
            f_dim,
            f_dim2: if structure == 4 { f_dim2 } else { 0 },
            init_kwargs: v.clone(),
        })
    }

    /// The block resolutions img_resolution, …, 8 (the epilogue runs at 4).
    pub fn resolutions(&self) -> Vec<usize> {
        (3..=self.img_resolution.trailing_zeros())
            .rev()
            .map(|i| 1 << i)
            .collect()
    }

    pub fn channels(&self, res: usize) -> usize {
        channels(self.channel_base, self.channel_max, res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g_kwargs() -> Value {
        json!({"z_dim": 512, "w_dim": 512, "c_dim": 0, "img_resolution": 256, "img_channels": 3,
               "m_layer_features": 512, "m_num_layers": 8, "mapping_kwargs": {"num_layers": 8},
               "synthesis_kwargs": {"structure": 2, "channel_base": 32768, "channel_max": 512,
                                    "num_fp16_res": 4, "conv_clamp": 256, "change": 256, "f_dim": 512, "f_dim2": 0}})
    }

    #[test]
    fn the_papers_generator_reads_from_its_kwargs() {
        let c = GeneratorConfig::from_init_kwargs(&g_kwargs()).unwrap();
        assert_eq!(c.num_ws(), 14);
        assert_eq!(c.resolutions(), vec![4, 8, 16, 32, 64, 128, 256]);
        assert_eq!(
            (
                c.channels(4),
                c.channels(64),
                c.channels(128),
                c.channels(256)
            ),
            (512, 512, 256, 128)
        );
        assert_eq!(
            (c.conv_clamp, c.structure, c.fts_width()),
            (Some(256.0), 2, 512)
        );
    }

    #[test]
    fn the_conditioning_mlps_learn_at_the_forks_rate_unless_told_otherwise() {
        let c = GeneratorConfig::from_init_kwargs(&g_kwargs()).unwrap();
        assert_eq!(c.conditioning().lr_multiplier, 0.01);
        let mut v = g_kwargs();
        v["synthesis_kwargs"]["cond_lr_multiplier"] = json!(1.0);
        let c = GeneratorConfig::from_init_kwargs(&v).unwrap();
        assert_eq!(c.conditioning().lr_multiplier, 1.0);
        // Every layer's conditioning MLPs take it (the equalised-lr gain lr/√in).
        let mut small = v.clone();
        small["img_resolution"] = json!(8);
        small["synthesis_kwargs"]["channel_base"] = json!(64);
        small["synthesis_kwargs"]["f_dim"] = json!(16);
        let c = GeneratorConfig::from_init_kwargs(&small).unwrap();
        let g = crate::models::lafite::Network::<crate::models::lafite::Generator>::new(
            c,
            Some(0),
            &crate::Device::Cpu,
        )
        .unwrap();
        for b in &g.net.blocks {
            assert_eq!(b.conv1.cond.pre_0.weight_gain, 1.0 / 4.0);
            assert_eq!(b.torgb.cond.pre_1.bias_gain, 1.0);
        }
        v["synthesis_kwargs"]["cond_lr_multiplier"] = json!(0.0);
        let e = GeneratorConfig::from_init_kwargs(&v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cond_lr_multiplier must be positive"), "{e}");
    }

    #[test]
    fn keys_that_would_change_the_network_are_refused() {
        let mut v = g_kwargs();
        v["synthesis_kwargs"]["architecture"] = json!("resnet");
        let e = GeneratorConfig::from_init_kwargs(&v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("architecture") && e.contains("not supported"),
            "{e}"
        );
        let mut v = g_kwargs();
        v["synthesis_kwargs"]["mystery"] = json!(3);
        let e = GeneratorConfig::from_init_kwargs(&v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown keyword argument `mystery`"), "{e}");
        let mut v = g_kwargs();
        v["c_dim"] = json!(10);
        assert!(GeneratorConfig::from_init_kwargs(&v).is_err());
        let mut v = g_kwargs();
        v["synthesis_kwargs"]["structure"] = json!(4);
        assert!(GeneratorConfig::from_init_kwargs(&v)
            .unwrap_err()
            .to_string()
            .contains("f_dim2"));
        let mut v = g_kwargs();
        v["img_resolution"] = json!(100);
        assert!(GeneratorConfig::from_init_kwargs(&v).is_err());
        // Harmless extras pass.
        let mut v = g_kwargs();
        v["class_name"] = json!("training.networks.Generator");
        v["synthesis_kwargs"]["fp16_channels_last"] = json!(false);
        assert!(GeneratorConfig::from_init_kwargs(&v).is_ok());
    }

    #[test]
    fn the_discriminator_reads_from_its_kwargs() {
        let v = json!({"c_dim": 0, "img_resolution": 256, "img_channels": 3, "channel_base": 32768,
                       "channel_max": 512, "num_fp16_res": 4, "conv_clamp": 256, "use_norm": false, "use_fts": true,
                       "block_kwargs": {}, "mapping_kwargs": {},
                       "epilogue_kwargs": {"structure": 4, "mbstd_group_size": 4, "f_dim": 512, "f_dim2": 512}});
        let c = DiscriminatorConfig::from_init_kwargs(&v).unwrap();
        assert_eq!(c.resolutions(), vec![256, 128, 64, 32, 16, 8]);
        assert_eq!((c.structure, c.f_dim2, c.mbstd_group_size), (4, 512, 4));
        let mut bad = v.clone();
        bad["epilogue_kwargs"]["mbstd_group_size"] = json!("four");
        assert!(DiscriminatorConfig::from_init_kwargs(&bad).is_err());
    }
}
