//! Embedding gather: `y[i, :] = W[ids[i], :]` for a table `W` of shape `[vocab, dim]`.
//!
//! Backward: `dW[v, :] = Σ_{i: ids[i] = v} dy[i, :]` (a scatter-add). On the GPU the host groups
//! the positions of each distinct id (`IdGroups`) and one thread per (id, column) sums them in
//! position order: no atomics, so the gradient is deterministic and equals the CPU twin's bit
//! for bit.
//! Traffic: reads and writes dim·4 B per id. Kernel: `kernels/embedding.cu`.

use cudarc::driver::PushKernelArg;

use super::Real;

use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::tensor::{
    alloc_storage, arg_buffer, arg_buffer_mut, kernel_for, launch, launch_1d, upload, DType,
    Device, Gpu, Storage, Tensor,
};

pub mod cpu {
    use super::Real;

    /// Any element type: a bf16 table gathers as bits.
    pub fn gather<T: Copy>(w: &[T], ids: &[u32], dim: usize) -> Vec<T> {
        ids.iter()
            .flat_map(|&id| w[id as usize * dim..][..dim].iter().copied())
            .collect()
    }

    pub fn scatter_add<T: Real>(dy: &[T], ids: &[u32], vocab: usize, dim: usize) -> Vec<T> {
        let mut dw = vec![T::zero(); vocab * dim];
        for (i, &id) in ids.iter().enumerate() {
            for (acc, &g) in dw[id as usize * dim..][..dim]
                .iter_mut()
                .zip(&dy[i * dim..][..dim])
            {
                *acc = *acc + g;
            }
        }
        dw
    }
}

/// The positions of each distinct id, for the deterministic GPU scatter-add: `rows[r]` is an id,
/// `order[offsets[r]..offsets[r + 1]]` its positions in increasing order.
struct IdGroups {
    rows: Vec<u32>,
    offsets: Vec<u32>,
    order: Vec<u32>,
}

impl IdGroups {
    fn new(ids: &[u32]) -> IdGroups {
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        // Stable: equal ids keep their positions' order.
        order.sort_by_key(|&i| ids[i as usize]);
        let (mut rows, mut offsets) = (Vec::new(), Vec::new());
        for (j, &i) in order.iter().enumerate() {
            if rows.last() != Some(&ids[i as usize]) {
                rows.push(ids[i as usize]);
                offsets.push(j as u32);
            }
        }
        offsets.push(order.len() as u32);
        IdGroups {
            rows,
            offsets,
            order,
        }
    }
}

fn scatter_add_raw(dy: &Tensor, ids: &[u32], vocab: usize, dim: usize) -> Result<Tensor> {
    match dy.device() {
        Device::Cpu => {
            let s = dy.storage();
            Tensor::from_vec(
                cpu::scatter_add(s.cpu_f32("embedding backward")?, ids, vocab, dim),
                &[vocab, dim],
                dy.device(),
            )
        }
        Device::Cuda(gpu) => {
            let dw = Tensor::zeros(&[vocab, dim], dy.device())?;
            let groups = IdGroups::new(ids);
            if groups.rows.is_empty() || dim == 0 {
                return Ok(dw);
            }
            {
                let (s, mut d) = (dy.storage(), dw.storage_mut());
                let rows = upload(gpu, &groups.rows)?;
                let offsets = upload(gpu, &groups.offsets)?;
                let order = upload(gpu, &groups.order)?;
                let (n, dd) = (groups.rows.len() as u32, dim as u32);
                // SAFETY: ids were checked < vocab in the forward, so every row < vocab and dw
                // (vocab·dim) holds every write; order holds positions < ids.len() (dy's rows),
                // offsets n + 1 increasing bounds into order.
                launch!(
                    gpu,
                    "embedding",
                    "embedding_bwd_f32",
                    launch_1d(groups.rows.len() * dim),
                    s.cuda_f32("embedding backward")?,
                    &rows,
                    &offsets,
                    &order,
                    d.cuda_f32_mut("embedding backward")?,
                    &n,
                    &dd
                )?;
            }
            Ok(dw)
        }
    }
}

/// Rows of `weight` (`[vocab, dim]`) for each id: `[ids.len(), dim]`. An id ≥ vocab is an error.
pub fn embedding(tape: &mut Tape, weight: &Tensor, ids: &[u32]) -> Result<Tensor> {
    if weight.rank() != 2 {
        return Err(Error::shape(
            "embedding",
            format!("table must be [vocab, dim], got {:?}", weight.shape()),
        ));
    }
    let (vocab, dim) = (weight.shape()[0], weight.shape()[1]);
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::shape(
            "embedding",
            format!("id {bad} out of range for a table of {vocab} rows"),
        ));
    }
    let shape = [ids.len(), dim];
    if weight.dtype() != DType::F32 && tape.needs_grad(&[weight]) {
        return Err(Error::DType {
            op: "embedding",
            got: weight.dtype(),
            expected: "f32 when gradients are needed (bf16 is inference-only)",
        });
    }
    let y = match weight.device() {
        Device::Cpu => {
            let s = weight.storage();
            match &*s {
                Storage::CpuBF16(w) => Tensor::from_storage(
                    Storage::CpuBF16(cpu::gather(w, ids, dim)),
                    &shape,
                    weight.device(),
                ),
                other => Tensor::from_vec(
                    cpu::gather(other.cpu_f32("embedding")?, ids, dim),
                    &shape,
                    weight.device(),
                )?,
            }
        }
        Device::Cuda(gpu) => gather_on_device(gpu, weight, &upload(gpu, ids)?, ids.len())?,
    };
    let ids = ids.to_vec();
    tape.record(&[weight], &y, move |dy| {
        Ok(vec![Some(scatter_add_raw(dy, &ids, vocab, dim)?)])
    });
    Ok(y)
}

/// Rows of `weight` for the first `n` ids of a device buffer, off the tape: the gather a CUDA
/// graph replays, its ids written into `ids` before each replay. The caller has checked every
/// id against the table's row count.
pub fn gather_rows_staged(
    weight: &Tensor,
    ids: &cudarc::driver::CudaSlice<u32>,
    n: usize,
) -> Result<Tensor> {
    match weight.device() {
        Device::Cuda(gpu) if weight.rank() == 2 && ids.len() >= n => {
            gather_on_device(gpu, weight, ids, n)
        }
        _ => Err(Error::Invalid(format!(
            "gather_rows_staged: needs a [rows, dim] table on a GPU and {n} staged ids (table {:?} on {}, {} ids)",
            weight.shape(),
            weight.device(),
            ids.len()
        ))),
    }
}

/// The forward gather on a GPU: `n` ids already on the device, each < the table's rows.
fn gather_on_device(
    gpu: &Gpu,
    weight: &Tensor,
    ids_dev: &cudarc::driver::CudaSlice<u32>,
    n: usize,
) -> Result<Tensor> {
    let dim = weight.shape()[1];
    // A bf16 table gathers as 2-byte bits.
    let name = kernel_for(
        "embedding",
        weight.dtype(),
        "embedding_fwd_f32",
        "embedding_fwd_b16",
    )?;
    let s = weight.storage();
    let mut y = alloc_storage(gpu, weight.dtype(), n * dim)?;
    let f = gpu.function("embedding", name)?;
    let mut lb = gpu.stream.launch_builder(&f);
    arg_buffer(&mut lb, &s, "embedding")?;
    lb.arg(ids_dev);
    arg_buffer_mut(&mut lb, &mut y, "embedding")?;
    let (nn, dd) = (n as u32, dim as u32);
    lb.arg(&nn).arg(&dd);
    // SAFETY: the first n ids are < vocab (the callers' check); writes n·dim outputs.
    unsafe { lb.launch(launch_1d(n * dim)) }.map_err(|e| Error::cuda(name, e))?;
    Ok(Tensor::from_storage(y, &[n, dim], weight.device()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gpu, gradcheck, parity_sizes, random_vec};

    #[test]
    fn scatter_add_is_the_gradient_of_gather() {
        let (vocab, dim, ids) = (5, 3, [4u32, 0, 4, 2]);
        let w: Vec<f64> = random_vec(15, 1).iter().map(|&v| v as f64).collect();
        let r: Vec<f64> = random_vec(12, 2).iter().map(|&v| v as f64).collect();
        let loss = |w: &[f64]| {
            cpu::gather(w, &ids, dim)
                .iter()
                .zip(&r)
                .map(|(a, b)| a * b)
                .sum::<f64>()
        };
        gradcheck(
            "embedding",
            loss,
            &w,
            &cpu::scatter_add(&r, &ids, vocab, dim),
        );
    }

    #[test]
    fn embedding_on_every_device() {
        for device in devices() {
            let wv = random_vec(12, 3);
            let w = Tensor::from_slice(&wv, &[4, 3], &device).unwrap();
            let mut tape = Tape::new();
            tape.watch(&w);
            let y = embedding(&mut tape, &w, &[1, 1, 3]).unwrap();
            assert_close(
                &y.to_vec_f32().unwrap(),
                &[&wv[3..6], &wv[3..6], &wv[9..12]].concat(),
                0.0,
                0.0,
                "gather",
            );
            let loss = crate::ops::reduce::sum_all(&mut tape, &y).unwrap();
            let g = tape
                .backward(&loss)
                .unwrap()
                .get(&w)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            assert_close(
                &g,
                &[0., 0., 0., 2., 2., 2., 0., 0., 0., 1., 1., 1.],
                0.0,
                0.0,
                &format!("scatter on {device}"),
            );
        }
    }

    #[test]
    fn embedding_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for n in parity_sizes() {
            let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % 37).collect();
            let (wv, dyv) = (random_vec(37 * 5, 1), random_vec(n * 5, 2));
            let run = |d: &Device| {
                let w = Tensor::from_slice(&wv, &[37, 5], d).unwrap();
                let mut out = embedding(&mut Tape::inference(), &w, &ids)
                    .unwrap()
                    .to_vec_f32()
                    .unwrap();
                let dy = Tensor::from_slice(&dyv, &[n, 5], d).unwrap();
                out.extend(
                    scatter_add_raw(&dy, &ids, 37, 5)
                        .unwrap()
                        .to_vec_f32()
                        .unwrap(),
                );
                out
            };
            assert_close(
                &run(&gpu),
                &run(&Device::Cpu),
                1e-5,
                1e-5,
                &format!("embedding n={n}"),
            );
        }
    }

    #[test]
    fn embedding_backward_on_the_gpu_is_the_cpu_sum_bit_for_bit() {
        let Some(gpu) = gpu() else { return };
        // Many repeats of few ids (CLIP's padding token, a small vocabulary): atomics would add
        // them in a scheduling-dependent order; the grouped sum adds them in position order.
        for n in parity_sizes() {
            let ids: Vec<u32> = (0..n as u32).map(|i| (i * i + 3 * i) % 11).collect();
            let dyv = random_vec(n * 33, 7);
            let run = |d: &Device| {
                let dy = Tensor::from_slice(&dyv, &[n, 33], d).unwrap();
                let dw = scatter_add_raw(&dy, &ids, 13, 33).unwrap();
                dw.to_vec_f32().unwrap()
            };
            let (got, want) = (run(&gpu), run(&Device::Cpu));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "n = {n}");
            assert_eq!(bits(&got), bits(&run(&gpu)), "n = {n}: two GPU runs differ");
        }
        let groups = IdGroups::new(&[4, 1, 4, 0, 1, 4]);
        assert_eq!(groups.rows, [0, 1, 4]);
        assert_eq!(groups.offsets, [0, 1, 3, 6]);
        assert_eq!(groups.order, [3, 1, 4, 0, 2, 5]);
    }

    #[test]
    fn out_of_range_id_is_an_error() {
        let w = Tensor::zeros(&[4, 3], &Device::Cpu).unwrap();
        let err = embedding(&mut Tape::new(), &w, &[4])
            .unwrap_err()
            .to_string();
        assert!(err.contains("id 4 out of range"), "{err}");
    }

    /// A bf16 table gathers bf16 rows, bit for bit on both devices.
    #[test]
    fn bf16_gather_cuda_matches_cpu() {
        let w = Tensor::from_vec(random_vec(11 * 7, 1), &[11, 7], &Device::Cpu).unwrap();
        let ids = [3, 0, 10, 3, 7];
        crate::testing::bf16_parity("embedding", std::slice::from_ref(&w), 0.0, 0.0, |x| {
            embedding(&mut Tape::inference(), &x[0], &ids)
        });
        let got = embedding(
            &mut Tape::inference(),
            &w.to_dtype(crate::tensor::DType::BF16).unwrap(),
            &ids,
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
        assert_eq!(
            got[..7],
            w.to_dtype(crate::tensor::DType::BF16)
                .unwrap()
                .to_vec_f32()
                .unwrap()[21..28]
        );
        // bf16 has no backward: a watched bf16 table is refused up front.
        let w16 = w.to_dtype(crate::tensor::DType::BF16).unwrap();
        let mut tape = Tape::new();
        tape.watch(&w16);
        let err = embedding(&mut tape, &w16, &ids).unwrap_err().to_string();
        assert!(err.contains("inference-only"), "{err}");
    }
}
