//! The Mind Reader mapper `fmri_clip_res`: fMRI voxels → one 512-d CLIP-space vector.
//!
//! Input `[B, V]` (viewed as `[B, 1, V]`), output `[B, D]` (D = 512 for CLIP ViT-B/32):
//! 1. `encoder.0.0`: Conv1d(1→64, k4, s2, p1) + ReLU → `[B, 64, V/2]`
//! 2. `encoder.1..4`: residual blocks `net` = Conv1d k3 p1 → ReLU → Conv1d k3 p1 → ReLU →
//!    Conv1d k1, then `+ x` and ReLU (the reference's ResBlock_1d_BN with its BatchNorms removed)
//! 3. `encoder.5`: Conv1d(64→D, k1) → transpose → `[B, V/2, D]`
//! 4. `fc.1`: ReLU → Conv1d(V/2→128, k1) → ReLU → `fc.3`: Conv1d(128→1, k1) → `[B, D]`
//!
//! Steps 3–4 run without the transpose: both k1 convolutions over V/2 are products over the
//! last axis of `[B·D, V/2]` (see `forward`).
//!
//! Parameter names are the PyTorch state_dict's, so a checkpoint converted from the original code
//! loads by name. ~1.16M parameters at V = 15744.

use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::nn::{Conv1d, ParamStore};
use crate::ops::elementwise::Unary;
use crate::ops::matmul::linear_act;
use crate::ops::transpose;
use crate::tensor::{Device, Tensor};

/// The mapper's shape: voxel count, width of the convolutions, fc width, output dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapperConfig {
    pub voxels: usize,
    pub hidden: usize,
    pub fc_hidden: usize,
    pub out_dim: usize,
    pub res_blocks: usize,
}

impl MapperConfig {
    /// Mind Reader's mapper for `voxels` inputs and `out_dim` outputs.
    pub fn mind_reader(voxels: usize, out_dim: usize) -> MapperConfig {
        MapperConfig {
            voxels,
            hidden: 64,
            fc_hidden: 128,
            out_dim,
            res_blocks: 4,
        }
    }

    /// Length after the stride-2 stem: ⌊(V + 2 − 4)/2⌋ + 1 = ⌊V/2⌋.
    pub fn length(&self) -> usize {
        (self.voxels + 2 - 4) / 2 + 1
    }
}

struct ResBlock {
    net_0: Conv1d,
    net_2: Conv1d,
    net_4: Conv1d,
}

pub struct Mapper {
    pub config: MapperConfig,
    stem: Conv1d,
    blocks: Vec<ResBlock>,
    proj: Conv1d,
    fc_1: Conv1d,
    fc_3: Conv1d,
}

impl Mapper {
    /// A freshly initialised mapper whose parameters are registered in `store`.
    pub fn new(
        config: MapperConfig,
        store: &mut ParamStore,
        seed: u64,
        device: &Device,
    ) -> Result<Mapper> {
        if config.voxels < 4 {
            return Err(Error::Invalid(format!(
                "the mapper needs at least 4 voxels, got {}",
                config.voxels
            )));
        }
        let h = config.hidden;
        let stem = Conv1d::new(store, "encoder.0.0", h, 1, 4, seed, device)?;
        let mut blocks = Vec::new();
        for i in 0..config.res_blocks {
            let s = seed + 10 * (i as u64 + 1);
            let name = |j| format!("encoder.{}.net.{j}", i + 1);
            blocks.push(ResBlock {
                net_0: Conv1d::new(store, &name(0), h, h, 3, s, device)?,
                net_2: Conv1d::new(store, &name(2), h, h, 3, s + 2, device)?,
                net_4: Conv1d::new(store, &name(4), h, h, 1, s + 4, device)?,
            });
        }
        let proj = Conv1d::new(
            store,
            &format!("encoder.{}", config.res_blocks + 1),
            config.out_dim,
            h,
            1,
            seed + 100,
            device,
        )?;
        let fc_1 = Conv1d::new(
            store,
            "fc.1",
            config.fc_hidden,
            config.length(),
            1,
            seed + 200,
            device,
        )?;
        let fc_3 = Conv1d::new(store, "fc.3", 1, config.fc_hidden, 1, seed + 300, device)?;
        Ok(Mapper {
            config,
            stem,
            blocks,
            proj,
            fc_1,
            fc_3,
        })
    }

    /// `[B, V]` voxels → `[B, out_dim]`.
    pub fn forward(&self, tape: &mut Tape, fmri: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        if fmri.rank() != 2 || fmri.shape()[1] != c.voxels {
            return Err(Error::shape(
                "mapper",
                format!(
                    "expected fMRI of shape [batch, {}], got {:?}",
                    c.voxels,
                    fmri.shape()
                ),
            ));
        }
        let b = fmri.shape()[0];
        let x = transpose::reshape(tape, fmri, &[b, 1, c.voxels])?;
        // Each conv's bias, ReLU and (in a block's last conv) residual add are fused into the
        // conv's epilogue: the same numbers as the separate ops, with two (three) fewer passes
        // over the activation, each a read and a write of it.
        let mut x = self.stem.forward_relu(tape, &x, 2, 1, None)?;
        for blk in &self.blocks {
            let h = blk.net_0.forward_relu(tape, &x, 1, 1, None)?;
            let h = blk.net_2.forward_relu(tape, &h, 1, 1, None)?;
            x = blk.net_4.forward_relu(tape, &h, 1, 0, Some(&x))?; // relu(net(x) + x)
        }
        let x = self.proj.forward_relu(tape, &x, 1, 0, None)?; // [B, D, L]
                                                               // The reference transposes to [B, L, D] and convolves over L with k1 kernels. That is a
                                                               // product over the last axis of [B·D, L], so the transpose (B·D·L values each way,
                                                               // 2 GB at B = 128, V = 15744) is never made: fc.1 is one linear with its ReLU fused,
                                                               // fc.3 another, on the k1 kernels viewed as [out, in] matrices.
        let (l, h) = (c.length(), c.fc_hidden);
        let x = transpose::reshape(tape, &x, &[b * c.out_dim, l])?;
        let w1 = transpose::reshape(tape, &self.fc_1.weight, &[h, l])?;
        let x = linear_act(tape, &x, &w1, Some(&self.fc_1.bias), Some(Unary::Relu))?; // [B·D, 128]
        let w3 = transpose::reshape(tape, &self.fc_3.weight, &[1, h])?;
        let y = linear_act(tape, &x, &w3, Some(&self.fc_3.bias), None)?; // [B·D, 1]
        transpose::reshape(tape, &y, &[b, c.out_dim])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_vec;

    #[test]
    fn parameter_names_and_count_match_the_reference() {
        let mut store = ParamStore::new();
        Mapper::new(
            MapperConfig::mind_reader(15744, 512),
            &mut store,
            0,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(store.num_elements(), 1_156_929);
        let names: Vec<&str> = store.iter().map(|p| p.name.as_str()).collect();
        for n in [
            "encoder.0.0.weight",
            "encoder.1.net.0.weight",
            "encoder.4.net.4.bias",
            "encoder.5.weight",
            "fc.1.weight",
            "fc.3.bias",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert_eq!(store.get("fc.1.weight").unwrap().shape(), &[128, 7872, 1]);
    }

    #[test]
    fn forward_shape_and_bad_input() {
        let mut store = ParamStore::new();
        let m = Mapper::new(
            MapperConfig {
                voxels: 37,
                hidden: 8,
                fc_hidden: 5,
                out_dim: 6,
                res_blocks: 2,
            },
            &mut store,
            1,
            &Device::Cpu,
        )
        .unwrap();
        let x = Tensor::from_vec(random_vec(3 * 37, 2), &[3, 37], &Device::Cpu).unwrap();
        assert_eq!(
            m.forward(&mut Tape::inference(), &x).unwrap().shape(),
            &[3, 6]
        );
        let bad = Tensor::zeros(&[3, 36], &Device::Cpu).unwrap();
        assert!(m
            .forward(&mut Tape::inference(), &bad)
            .unwrap_err()
            .to_string()
            .contains("[batch, 37]"));
    }
}
