//! Mind Reader's training augmentations on f32 RGB images `[B, 3, H, W]` with values in [0, 1]
//! (torchvision's `ToTensor` range, before `Normalize`): augment first, normalise after, as
//! torchvision composes them.
//!
//! Every op comes in two forms: one that applies explicit per-image parameters (`hflip(x, &flags)`)
//! and a seeded `random_*` one that draws those parameters on the host, one `data::rng` stream
//! per image (`Rng::stream(seed, stage::AUGMENT, …)`, stable across machines and rayon schedules),
//! then calls the first. The CPU twin and the CUDA kernel therefore receive identical parameters
//! and are directly comparable. A probability `p` applies the op to each image independently.
//!
//! **Horizontal flip** (p = 0.5): `y[b,c,i,j] = x[b,c,i,W−1−j]` where image b is flipped, else
//! `y = x`. Kernel `hflip_f32`: one thread per output element, reads x once and writes y once
//! (8 bytes per element in f32).
//!
//! No backward: augmentations act on data, before anything is tracked.

use rayon::prelude::*;

use crate::data::rng::{stage, Rng};
use crate::error::{Error, Result};
use crate::tensor::{launch, launch_1d, Device, Gpu, Storage, Tensor};

/// Tags that separate the streams of the `random_*` ops, so that calling several of them with
/// one seed draws independent parameters.
mod tag {
    pub const HFLIP: u64 = 1;
}

/// `[B, H, W]` of a batch of RGB images `[B, 3, H, W]` with H, W ≥ 1.
fn image_dims(op: &'static str, x: &Tensor) -> Result<[usize; 3]> {
    match *x.shape() {
        [b, 3, h, w] if h > 0 && w > 0 => Ok([b, h, w]),
        _ => Err(Error::shape(op, format!("images must be f32 [B, 3, H, W] with H, W ≥ 1, got {:?}", x.shape()))),
    }
}

/// Errors unless there is one parameter per image.
fn one_per_image(op: &'static str, params: usize, batch: usize) -> Result<()> {
    if params != batch {
        return Err(Error::shape(op, format!("{params} per-image parameters for a batch of {batch} images")));
    }
    Ok(())
}

/// Draws one value per image, each from its own stream of `seed`.
fn per_image<T>(seed: u64, tag: u64, batch: usize, mut draw: impl FnMut(&mut Rng) -> T) -> Vec<T> {
    (0..batch).map(|b| draw(&mut Rng::stream(seed, stage::AUGMENT, ((b as u64) << 8) | tag))).collect()
}

fn upload<T: cudarc::driver::DeviceRepr>(gpu: &Gpu, op: &'static str, v: &[T]) -> Result<cudarc::driver::CudaSlice<T>> {
    gpu.stream.clone_htod(v).map_err(|e| Error::cuda(op, e))
}

/// The CPU twins: plain loops over planar `[B, 3, H, W]` f32 buffers, one rayon task per image.
pub mod cpu {
    use super::*;

    /// Reverses the columns of the images whose flag is set.
    pub fn hflip(x: &[f32], flip: &[bool], [_, h, w]: [usize; 3]) -> Vec<f32> {
        let mut y = x.to_vec();
        y.par_chunks_mut(3 * h * w).zip(flip).for_each(|(img, &f)| {
            if f {
                img.chunks_mut(w).for_each(<[f32]>::reverse);
            }
        });
        y
    }
}

/// Horizontal flip of the images whose flag is set (`flip.len()` = B).
pub fn hflip(x: &Tensor, flip: &[bool]) -> Result<Tensor> {
    let dims @ [b, h, w] = image_dims("hflip", x)?;
    one_per_image("hflip", flip.len(), b)?;
    let s = x.storage();
    match x.device() {
        Device::Cpu => Tensor::from_vec(cpu::hflip(s.cpu_f32("hflip")?, flip, dims), x.shape(), x.device()),
        Device::Cuda(gpu) => {
            let n = x.numel();
            let flags = upload(gpu, "hflip", &flip.iter().map(|&f| f as i32).collect::<Vec<_>>())?;
            let mut y = gpu.alloc::<f32>(n)?;
            let (bb, hh, ww) = (b as u32, h as u32, w as u32);
            // SAFETY: writes the n = B·3·H·W elements of y; reads x at the same row, column W−1−j
            // or j < W, and one flag per image.
            launch!(gpu, "augment", "hflip_f32", launch_1d(n), s.cuda_f32("hflip")?, &mut y, &flags, &bb, &hh, &ww)?;
            Ok(Tensor::from_storage(Storage::CudaF32(y), x.shape(), x.device()))
        }
    }
}

/// torchvision's `RandomHorizontalFlip(p)`, each image independently; Mind Reader uses p = 0.5.
pub fn random_hflip(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let [b, _, _] = image_dims("random_hflip", x)?;
    hflip(x, &per_image(seed, tag::HFLIP, b, |r| r.chance(p)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gpu, random_vec};

    /// Awkward image sizes for parity: odd, prime, single-pixel, wider and taller than a block.
    const PARITY_SHAPES: [[usize; 4]; 5] = [[1, 3, 1, 1], [3, 3, 7, 33], [2, 3, 33, 7], [5, 3, 37, 53], [2, 3, 67, 129]];

    /// [0, 1) images from a seed.
    fn unit_images(shape: [usize; 4], seed: u64) -> Vec<f32> {
        random_vec(shape.iter().product(), seed).into_iter().map(|v| 0.5 * v + 0.5).collect()
    }

    fn tensor(v: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor {
        Tensor::from_vec(v, &shape, device).unwrap()
    }

    /// Runs `op` on the CPU and the GPU (when there is one) over the parity shapes.
    fn cuda_matches_cpu(name: &str, rtol: f32, atol: f32, op: impl Fn(&Tensor, u64) -> Result<Tensor>) {
        let Some(gpu) = gpu() else { return };
        for (k, shape) in PARITY_SHAPES.into_iter().enumerate() {
            let v = unit_images(shape, 100 + k as u64);
            let want = op(&tensor(v.clone(), shape, &Device::Cpu), k as u64).unwrap().to_vec_f32().unwrap();
            let got = op(&tensor(v, shape, &gpu), k as u64).unwrap().to_vec_f32().unwrap();
            assert_close(&got, &want, rtol, atol, &format!("{name} {shape:?}"));
        }
    }

    /// Same seed → same output; another seed → another output (16 images make a coincidence
    /// of all per-image draws negligible).
    fn seeded(op: impl Fn(&Tensor, u64) -> Result<Tensor>) {
        let shape = [16, 3, 9, 11];
        let x = tensor(unit_images(shape, 5), shape, &Device::Cpu);
        let a = op(&x, 1).unwrap().to_vec_f32().unwrap();
        assert_eq!(a, op(&x, 1).unwrap().to_vec_f32().unwrap());
        assert_ne!(a, op(&x, 2).unwrap().to_vec_f32().unwrap());
    }

    #[test]
    fn hflip_reverses_columns_of_flagged_images() {
        for d in devices() {
            let shape = [2, 3, 2, 3];
            let x: Vec<f32> = (0..36).map(|v| v as f32).collect();
            let y = hflip(&tensor(x.clone(), shape, &d), &[true, false]).unwrap().to_vec_f32().unwrap();
            assert_eq!(&y[..6], &[2.0, 1.0, 0.0, 5.0, 4.0, 3.0], "{d}");
            assert_eq!(&y[15..18], &[17.0, 16.0, 15.0], "{d}");
            assert_eq!(&y[18..], &x[18..], "{d}: the second image is not flipped");
        }
    }

    #[test]
    fn random_hflip_is_seeded() {
        seeded(|x, s| random_hflip(x, 0.5, s));
    }

    #[test]
    fn wrong_shapes_and_parameter_counts_are_errors() {
        let x = tensor(vec![0.0; 12], [1, 3, 2, 2], &Device::Cpu);
        assert!(hflip(&x, &[true, false]).is_err());
        let gray = Tensor::from_vec(vec![0.0; 4], &[1, 1, 2, 2], &Device::Cpu).unwrap();
        assert!(random_hflip(&gray, 0.5, 0).is_err());
    }

    #[test]
    fn hflip_cuda_matches_cpu() {
        cuda_matches_cpu("hflip", 0.0, 0.0, |x, s| random_hflip(x, 0.5, s));
    }
}
