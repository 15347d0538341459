//! `Tensor`: a shape, a dtype and a contiguous row-major buffer on a `Device`.
//!
//! Tensors are cheap handles (`Clone` shares the buffer). Ops never write into their inputs;
//! the optimiser is the one writer, updating parameters in place through `storage_mut`.

mod device;

pub(crate) use device::launch;
pub use device::{launch_1d, set_poison_outputs, why_no_gpu, Device, Gpu};

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        })
    }
}

/// The bytes behind a tensor.
pub enum Storage {
    CpuF32(Vec<f32>),
    CpuBF16(Vec<bf16>),
    CpuF16(Vec<f16>),
    CudaF32(CudaSlice<f32>),
    CudaBF16(CudaSlice<bf16>),
    CudaF16(CudaSlice<f16>),
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::CpuF32(_) | Storage::CudaF32(_) => DType::F32,
            Storage::CpuBF16(_) | Storage::CudaBF16(_) => DType::BF16,
            Storage::CpuF16(_) | Storage::CudaF16(_) => DType::F16,
        }
    }

    pub fn cpu_f32(&self, op: &'static str) -> Result<&[f32]> {
        match self {
            Storage::CpuF32(v) => Ok(v),
            other => Err(Error::DType {
                op,
                got: other.dtype(),
                expected: "f32 on the CPU",
            }),
        }
    }

    pub fn cpu_f32_mut(&mut self, op: &'static str) -> Result<&mut Vec<f32>> {
        match self {
            Storage::CpuF32(v) => Ok(v),
            other => Err(Error::DType {
                op,
                got: other.dtype(),
                expected: "f32 on the CPU",
            }),
        }
    }

    pub fn cuda_f32(&self, op: &'static str) -> Result<&CudaSlice<f32>> {
        match self {
            Storage::CudaF32(v) => Ok(v),
            other => Err(Error::DType {
                op,
                got: other.dtype(),
                expected: "f32 on a GPU",
            }),
        }
    }

    pub fn cuda_f32_mut(&mut self, op: &'static str) -> Result<&mut CudaSlice<f32>> {
        match self {
            Storage::CudaF32(v) => Ok(v),
            other => Err(Error::DType {
                op,
                got: other.dtype(),
                expected: "f32 on a GPU",
            }),
        }
    }

    pub fn cuda_bf16(&self, op: &'static str) -> Result<&CudaSlice<bf16>> {
        match self {
            Storage::CudaBF16(v) => Ok(v),
            other => Err(Error::DType {
                op,
                got: other.dtype(),
                expected: "bf16 on a GPU",
            }),
        }
    }
}

/// Pushes a GPU buffer of whatever dtype it holds as a kernel argument: one launch site serves
/// the f32 and bf16 kernels of an op (the kernel chosen must take that element type).
pub(crate) fn arg_buffer<'a>(
    b: &mut cudarc::driver::LaunchArgs<'a>,
    s: &'a Storage,
    op: &'static str,
) -> Result<()> {
    match s {
        Storage::CudaF32(v) => b.arg(v),
        Storage::CudaBF16(v) => b.arg(v),
        Storage::CudaF16(v) => b.arg(v),
        other => {
            return Err(Error::DType {
                op,
                got: other.dtype(),
                expected: "a GPU buffer",
            })
        }
    };
    Ok(())
}

/// A GPU buffer of `n` elements of `dtype` (poisoned in tests, like `Gpu::alloc`): the output of
/// an op whose f32 and bf16 kernels share one launch site.
pub(crate) fn alloc_storage(gpu: &Gpu, dtype: DType, n: usize) -> Result<Storage> {
    Ok(match dtype {
        DType::F32 => Storage::CudaF32(gpu.alloc::<f32>(n)?),
        DType::BF16 => Storage::CudaBF16(gpu.alloc::<bf16>(n)?),
        DType::F16 => Storage::CudaF16(gpu.alloc::<f16>(n)?),
    })
}

/// The kernel of an op's f32/bf16 pair for `dtype`; other dtypes are an error naming the op.
pub(crate) fn kernel_for(
    op: &'static str,
    dtype: DType,
    f32_kernel: &'static str,
    bf16_kernel: &'static str,
) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok(f32_kernel),
        DType::BF16 => Ok(bf16_kernel),
        other => Err(Error::DType {
            op,
            got: other,
            expected: "f32 or bf16",
        }),
    }
}

/// `arg_buffer` for an output.
pub(crate) fn arg_buffer_mut<'a>(
    b: &mut cudarc::driver::LaunchArgs<'a>,
    s: &'a mut Storage,
    op: &'static str,
) -> Result<()> {
    match s {
        Storage::CudaF32(v) => b.arg(v),
        Storage::CudaBF16(v) => b.arg(v),
        Storage::CudaF16(v) => b.arg(v),
        other => {
            return Err(Error::DType {
                op,
                got: other.dtype(),
                expected: "a GPU buffer",
            })
        }
    };
    Ok(())
}

/// A process-unique tensor identity: the tape keys gradients by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> TensorId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Clone)]
pub struct Tensor {
    id: TensorId,
    shape: Arc<[usize]>,
    device: Device,
    storage: Arc<RwLock<Storage>>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}, {})",
            self.shape,
            self.dtype(),
            self.device
        )
    }
}

impl Tensor {
    /// Wraps a freshly computed buffer; the buffer must hold `shape.iter().product()` elements
    /// (GPU buffers may hold one spare element for empty tensors).
    pub fn from_storage(storage: Storage, shape: &[usize], device: &Device) -> Tensor {
        Tensor {
            id: TensorId::fresh(),
            shape: shape.into(),
            device: device.clone(),
            storage: Arc::new(RwLock::new(storage)),
        }
    }

    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if data.len() != n {
            return Err(Error::shape(
                "Tensor::from_vec",
                format!("{} values for shape {shape:?} ({n} elements)", data.len()),
            ));
        }
        let storage = match device {
            Device::Cpu => Storage::CpuF32(data),
            Device::Cuda(gpu) => Storage::CudaF32(upload(gpu, &data)?),
        };
        Ok(Tensor::from_storage(storage, shape, device))
    }

    pub fn from_slice(data: &[f32], shape: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }

    pub fn full(value: f32, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        match device {
            Device::Cpu => Tensor::from_vec(vec![value; n], shape, device),
            // A memset, not an upload: the backward's seed inside a CUDA graph capture.
            Device::Cuda(gpu) => Ok(Tensor::from_storage(
                Storage::CudaF32(gpu.filled(n, value)?),
                shape,
                device,
            )),
        }
    }

    pub fn zeros(shape: &[usize], device: &Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Tensor::full(0.0, shape, device),
            Device::Cuda(gpu) => Ok(Tensor::from_storage(
                Storage::CudaF32(gpu.zeros(shape.iter().product())?),
                shape,
                device,
            )),
        }
    }

    /// Zeros of `dtype`.
    pub fn zeros_dtype(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        match (dtype, device) {
            (DType::F32, _) => Tensor::zeros(shape, device),
            (DType::BF16, Device::Cuda(gpu)) => Ok(Tensor::from_storage(
                Storage::CudaBF16(gpu.zeros(n)?),
                shape,
                device,
            )),
            (DType::F16, Device::Cuda(gpu)) => Ok(Tensor::from_storage(
                Storage::CudaF16(gpu.zeros(n)?),
                shape,
                device,
            )),
            (DType::BF16, Device::Cpu) => Ok(Tensor::from_storage(
                Storage::CpuBF16(vec![bf16::ZERO; n]),
                shape,
                device,
            )),
            (DType::F16, Device::Cpu) => Ok(Tensor::from_storage(
                Storage::CpuF16(vec![f16::ZERO; n]),
                shape,
                device,
            )),
        }
    }

    /// Normal(0, std²) values from a seeded generator (Box–Muller), identical on every device.
    pub fn randn(shape: &[usize], std: f32, seed: u64, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(randn_vec(shape.iter().product(), std, seed), shape, device)
    }

    /// Uniform values in [lo, hi) from a seeded generator.
    pub fn rand_uniform(
        shape: &[usize],
        lo: f32,
        hi: f32,
        seed: u64,
        device: &Device,
    ) -> Result<Tensor> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v = (0..shape.iter().product())
            .map(|_| rng.gen_range(lo..hi))
            .collect();
        Tensor::from_vec(v, shape, device)
    }

    pub fn id(&self) -> TensorId {
        self.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.storage().dtype()
    }

    /// Size of `axis`, accepting negative axes (-1 = last).
    pub fn dim(&self, axis: isize) -> Result<usize> {
        Ok(self.shape[self.axis(axis)?])
    }

    /// Resolves a possibly negative axis against this tensor's rank.
    pub fn axis(&self, axis: isize) -> Result<usize> {
        let r = self.rank() as isize;
        let a = if axis < 0 { axis + r } else { axis };
        if a < 0 || a >= r {
            return Err(Error::shape(
                "axis",
                format!("axis {axis} out of range for shape {:?}", self.shape),
            ));
        }
        Ok(a as usize)
    }

    pub fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.storage.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Write access for in-place updates (the optimiser). Ops never use this on their inputs.
    pub fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.storage.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `src`'s buffer in place of this tensor's, in place: every handle to this tensor (a
    /// model's field, a parameter store's entry) sees the new values. For weights being loaded,
    /// converted or reset; ops never do this to their inputs. `src` must have this shape and be a
    /// tensor of its own (not a handle to this buffer).
    pub fn set_storage_from(&self, src: Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::shape(
                "set_storage_from",
                format!("{:?} into {:?}", src.shape(), self.shape()),
            ));
        }
        if Arc::ptr_eq(&src.storage, &self.storage) {
            return Ok(());
        }
        let new = std::mem::replace(&mut *src.storage_mut(), Storage::CpuF32(Vec::new()));
        *self.storage_mut() = new;
        Ok(())
    }

    /// The same buffer under another shape with the same element count (no copy). This is a new
    /// tensor for the tape; record it through `ops::reshape` when gradients must flow.
    pub fn reshaped(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "{:?} ({} elements) to {shape:?} ({n} elements)",
                    self.shape,
                    self.numel()
                ),
            ));
        }
        Ok(Tensor {
            id: TensorId::fresh(),
            shape: shape.into(),
            device: self.device.clone(),
            storage: self.storage.clone(),
        })
    }

    /// Copies the values to the host as f32 (converting bf16/f16).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        let n = self.numel();
        let s = self.storage();
        Ok(match &*s {
            Storage::CpuF32(v) => v[..n].to_vec(),
            Storage::CpuBF16(v) => v[..n].iter().map(|x| x.to_f32()).collect(),
            Storage::CpuF16(v) => v[..n].iter().map(|x| x.to_f32()).collect(),
            Storage::CudaF32(b) => download(&self.device, b, n)?,
            Storage::CudaBF16(b) => download(&self.device, b, n)?
                .into_iter()
                .map(|x| x.to_f32())
                .collect(),
            Storage::CudaF16(b) => download(&self.device, b, n)?
                .into_iter()
                .map(|x| x.to_f32())
                .collect(),
        })
    }

    /// The single value of a one-element tensor.
    pub fn scalar(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "scalar",
                format!("tensor of shape {:?} is not a scalar", self.shape),
            ));
        }
        Ok(self.to_vec_f32()?[0])
    }

    /// A copy on another device (same dtype).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        let n = self.numel();
        let s = self.storage();
        let storage = match (&*s, device) {
            (Storage::CpuF32(v), Device::Cpu) => Storage::CpuF32(v.clone()),
            (Storage::CpuBF16(v), Device::Cpu) => Storage::CpuBF16(v.clone()),
            (Storage::CpuF16(v), Device::Cpu) => Storage::CpuF16(v.clone()),
            (Storage::CpuF32(v), Device::Cuda(g)) => Storage::CudaF32(upload(g, v)?),
            (Storage::CpuBF16(v), Device::Cuda(g)) => Storage::CudaBF16(upload(g, v)?),
            (Storage::CpuF16(v), Device::Cuda(g)) => Storage::CudaF16(upload(g, v)?),
            (Storage::CudaF32(b), Device::Cpu) => Storage::CpuF32(download(&self.device, b, n)?),
            (Storage::CudaBF16(b), Device::Cpu) => Storage::CpuBF16(download(&self.device, b, n)?),
            (Storage::CudaF16(b), Device::Cpu) => Storage::CpuF16(download(&self.device, b, n)?),
            (_, Device::Cuda(_)) => {
                drop(s);
                return self.to_device(&Device::Cpu)?.to_device(device);
            }
        };
        Ok(Tensor::from_storage(storage, &self.shape, device))
    }

    /// A copy converted to `dtype` (round to nearest even), on the same device.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        match &self.device {
            Device::Cpu => {
                let v = self.to_vec_f32()?;
                let storage = match dtype {
                    DType::F32 => Storage::CpuF32(v),
                    DType::BF16 => Storage::CpuBF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
                    DType::F16 => Storage::CpuF16(v.iter().map(|&x| f16::from_f32(x)).collect()),
                };
                Ok(Tensor::from_storage(storage, &self.shape, &self.device))
            }
            Device::Cuda(gpu) => cast_cuda(gpu, self, dtype),
        }
    }

    /// `self + other` as a new tensor (same shape, dtype and device; f32 or bf16, a bf16 sum in
    /// f32 rounded once): how the tape sums the gradients of a tensor that feeds several ops.
    /// The inputs are untouched (a gradient may share its buffer with another). On the GPU:
    /// `binary_<dtype>` of `kernels/elementwise.cu` with op 0 (add), the kernel of `ops::add`.
    pub fn accumulate(&self, other: &Tensor) -> Result<Tensor> {
        const OP: &str = "accumulate";
        if !self.device.same(&other.device) {
            return Err(Error::DeviceMismatch {
                op: OP,
                a: self.device.to_string(),
                b: other.device.to_string(),
            });
        }
        if self.shape != other.shape {
            return Err(Error::shape(
                OP,
                format!("{:?} vs {:?}", self.shape, other.shape),
            ));
        }
        if self.dtype() != other.dtype() {
            return Err(Error::Invalid(format!(
                "{OP}: inputs are {} and {}: convert one so all have the same dtype",
                self.dtype(),
                other.dtype()
            )));
        }
        let n = self.numel();
        let (a, b) = (self.storage(), other.storage());
        let storage = match (&*a, &*b, &self.device) {
            (Storage::CpuF32(a), Storage::CpuF32(b), _) => Storage::CpuF32(
                a[..n]
                    .par_iter()
                    .zip(&b[..n])
                    .with_min_len(1 << 14)
                    .map(|(&u, &v)| u + v)
                    .collect(),
            ),
            (Storage::CpuBF16(a), Storage::CpuBF16(b), _) => Storage::CpuBF16(
                a[..n]
                    .par_iter()
                    .zip(&b[..n])
                    .with_min_len(1 << 14)
                    .map(|(&u, &v)| bf16::from_f32(u.to_f32() + v.to_f32()))
                    .collect(),
            ),
            (_, _, Device::Cuda(gpu)) => {
                let name = kernel_for(OP, self.dtype(), "binary_f32", "binary_bf16")?;
                let mut y = alloc_storage(gpu, self.dtype(), n)?;
                let f = gpu.function("elementwise", name)?;
                let mut lb = gpu.stream.launch_builder(&f);
                arg_buffer(&mut lb, &a, OP)?;
                arg_buffer(&mut lb, &b, OP)?;
                arg_buffer_mut(&mut lb, &mut y, OP)?;
                let (nn, add) = (n as u64, 0i32);
                lb.arg(&nn).arg(&add);
                // SAFETY: reads n of a and b, writes n of y, all of the kernel's dtype.
                unsafe { lb.launch(launch_1d(n)) }.map_err(|e| Error::cuda(name, e))?;
                y
            }
            (other, _, Device::Cpu) => {
                return Err(Error::DType {
                    op: OP,
                    got: other.dtype(),
                    expected: "f32 or bf16",
                })
            }
        };
        Ok(Tensor::from_storage(storage, &self.shape, &self.device))
    }
}

impl Tensor {
    /// Writes host values into this f32 tensor's buffer, in place: a buffer that a CUDA graph
    /// reads, staged before each replay.
    pub fn write_host(&self, values: &[f32]) -> Result<()> {
        if values.len() != self.numel() {
            return Err(Error::shape(
                "write_host",
                format!("{} values into {:?}", values.len(), self.shape()),
            ));
        }
        let mut to = self.storage_mut();
        match (&mut *to, &self.device) {
            (Storage::CpuF32(b), _) => b.copy_from_slice(values),
            (Storage::CudaF32(b), Device::Cuda(g)) => g
                .stream
                .memcpy_htod(values, b)
                .map_err(|e| Error::cuda("write_host", e))?,
            _ => return Err(Error::Invalid("write_host: an f32 tensor only".into())),
        }
        Ok(())
    }

    /// Copies `src`'s values into this tensor's buffer, in place (same shape and dtype, another
    /// buffer): a running total that lives across steps, or a CUDA graph's output. One device
    /// copy on a GPU.
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() || src.dtype() != self.dtype() {
            return Err(Error::shape(
                "copy_from",
                format!(
                    "{:?} {} into {:?} {}",
                    src.shape(),
                    src.dtype(),
                    self.shape(),
                    self.dtype()
                ),
            ));
        }
        if Arc::ptr_eq(&src.storage, &self.storage) || !src.device.same(&self.device) {
            return Err(Error::Invalid(
                "copy_from: the source must be another buffer on the same device".into(),
            ));
        }
        let (from, mut to) = (src.storage(), self.storage_mut());
        match (&*from, &mut *to, &self.device) {
            (Storage::CpuF32(a), Storage::CpuF32(b), _) => b.copy_from_slice(a),
            (Storage::CpuBF16(a), Storage::CpuBF16(b), _) => b.copy_from_slice(a),
            (Storage::CpuF16(a), Storage::CpuF16(b), _) => b.copy_from_slice(a),
            (Storage::CudaF32(a), Storage::CudaF32(b), Device::Cuda(g)) => g
                .stream
                .memcpy_dtod(a, b)
                .map_err(|e| Error::cuda("copy_from", e))?,
            (Storage::CudaBF16(a), Storage::CudaBF16(b), Device::Cuda(g)) => g
                .stream
                .memcpy_dtod(a, b)
                .map_err(|e| Error::cuda("copy_from", e))?,
            (Storage::CudaF16(a), Storage::CudaF16(b), Device::Cuda(g)) => g
                .stream
                .memcpy_dtod(a, b)
                .map_err(|e| Error::cuda("copy_from", e))?,
            _ => return Err(Error::Invalid("copy_from: mismatched storage".into())),
        }
        Ok(())
    }
}

/// Host → device copy.
pub fn upload<T: cudarc::driver::DeviceRepr>(gpu: &Gpu, data: &[T]) -> Result<CudaSlice<T>> {
    if gpu.is_capturing() {
        return Err(Error::Invalid(format!(
            "a host-to-device copy of {} elements inside a CUDA graph capture: a graph cannot read the host; stage the data in a device buffer before the replay",
            data.len()
        )));
    }
    if data.is_empty() {
        return unsafe { gpu.stream.alloc::<T>(1) }.map_err(|e| Error::cuda("allocating", e));
    }
    gpu.stream
        .clone_htod(data)
        .map_err(|e| Error::cuda("host-to-device copy", e))
}

thread_local! {
    /// Device-to-host copies made by this thread (see `downloads`).
    static DOWNLOADS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many device-to-host copies this thread has made so far. Each one waits for the GPU to
/// finish everything queued before it, so a training step's count is its host synchronisations
/// (tests hold steps to theirs).
pub fn downloads() -> u64 {
    DOWNLOADS.with(|c| c.get())
}

fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
    device: &Device,
    buf: &CudaSlice<T>,
    n: usize,
) -> Result<Vec<T>> {
    let Device::Cuda(gpu) = device else {
        return Err(Error::Invalid("a GPU buffer on a CPU tensor".into()));
    };
    let mut host = vec![T::default(); n];
    if n > 0 {
        DOWNLOADS.with(|c| c.set(c.get() + 1));
        gpu.stream
            .memcpy_dtoh(&buf.slice(0..n), &mut host)
            .map_err(|e| Error::cuda("device-to-host copy", e))?;
    }
    Ok(host)
}

/// dtype conversion on the GPU: `cast_<from>_<to>` in kernels/elementwise.cu.
fn cast_cuda(gpu: &Arc<Gpu>, x: &Tensor, dtype: DType) -> Result<Tensor> {
    let n = x.numel();
    let nn = n as u64;
    let cfg = launch_1d(n);
    let s = x.storage();
    let stream = &gpu.stream;
    macro_rules! cast {
        ($src:expr, $ty:ty, $variant:ident, $kernel:literal) => {{
            let f = gpu.function("elementwise", $kernel)?;
            let mut y = gpu.alloc::<$ty>(n)?;
            // SAFETY: reads n source elements, writes n outputs.
            unsafe {
                stream
                    .launch_builder(&f)
                    .arg($src)
                    .arg(&mut y)
                    .arg(&nn)
                    .launch(cfg)
            }
            .map_err(|e| Error::cuda($kernel, e))?;
            Storage::$variant(y)
        }};
    }
    let storage = match (&*s, dtype) {
        (Storage::CudaF32(b), DType::BF16) => cast!(b, bf16, CudaBF16, "cast_f32_bf16"),
        (Storage::CudaF32(b), DType::F16) => cast!(b, f16, CudaF16, "cast_f32_f16"),
        (Storage::CudaBF16(b), DType::F32) => cast!(b, f32, CudaF32, "cast_bf16_f32"),
        (Storage::CudaF16(b), DType::F32) => cast!(b, f32, CudaF32, "cast_f16_f32"),
        _ => {
            drop(s);
            return x.to_dtype(DType::F32)?.to_dtype(dtype);
        }
    };
    Ok(Tensor::from_storage(storage, x.shape(), x.device()))
}

/// `n` standard-normal values × std from a seeded generator (Box–Muller).
pub fn randn_vec(n: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32 * std);
        out.push((r * t.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gpu, parity_sizes, random_vec};

    /// The device's memory pool keeps what a step frees (release threshold u64::MAX, set when the
    /// GPU is opened), and buffers freed and allocated again still work: a caching allocator.
    #[test]
    fn the_device_pool_keeps_freed_memory() {
        let Some(device) = gpu() else { return };
        let Device::Cuda(g) = &device else {
            panic!("testing::gpu() gave {device}")
        };
        assert_eq!(g.pool_release_threshold().unwrap(), Some(u64::MAX));
        for round in 0..3 {
            let v = random_vec(1000 + round, round as u64);
            let t = Tensor::from_slice(&v, &[v.len()], &device).unwrap();
            assert_eq!(t.to_vec_f32().unwrap(), v, "round {round}");
        }
    }

    /// f32 → bf16 / f16 → f32 on the GPU (the cast kernels) is bit for bit the CPU's conversion
    /// (the `half` crate; both round to nearest even), specials included: ±0, ±inf, f16's
    /// overflow to inf and its subnormals, at an awkward length.
    #[test]
    fn dtype_casts_cuda_match_cpu() {
        let Some(gpu) = gpu() else { return };
        let mut v: Vec<f32> = random_vec(4097, 7).iter().map(|x| x * 3000.0).collect();
        v.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            65504.0,
            65520.0,
            -1e6,
            6e-8,
            3e-8,
            1e-40,
            1.0 + 1.0 / 512.0,
        ]);
        for dtype in [DType::BF16, DType::F16] {
            let cpu = Tensor::from_slice(&v, &[v.len()], &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let dev = Tensor::from_slice(&v, &[v.len()], &gpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            assert_eq!(dev.dtype(), dtype);
            let (want, got) = (
                cpu.to_vec_f32().unwrap(),
                dev.to_dtype(DType::F32).unwrap().to_vec_f32().unwrap(),
            );
            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{dtype:?} of {}: cpu {a}, {gpu} {b}",
                    v[i]
                );
            }
        }
    }

    /// `accumulate` is the elementwise sum, leaves its inputs as they were, and refuses
    /// mismatched shapes and dtypes with an error naming itself.
    #[test]
    fn accumulate_sums_without_touching_its_inputs() {
        let (u, v) = (random_vec(1000, 1), random_vec(1000, 2));
        let a = Tensor::from_slice(&u, &[10, 100], &Device::Cpu).unwrap();
        let b = Tensor::from_slice(&v, &[10, 100], &Device::Cpu).unwrap();
        let y = a.accumulate(&b).unwrap();
        assert_eq!(y.shape(), &[10, 100]);
        let want: Vec<f32> = u.iter().zip(&v).map(|(x, y)| x + y).collect();
        assert_eq!(y.to_vec_f32().unwrap(), want);
        assert_eq!(a.to_vec_f32().unwrap(), u);
        assert_eq!(b.to_vec_f32().unwrap(), v);
        let yb = a
            .to_dtype(DType::BF16)
            .unwrap()
            .accumulate(&b.to_dtype(DType::BF16).unwrap())
            .unwrap();
        assert_eq!(yb.dtype(), DType::BF16);
        let wb: Vec<f32> = u
            .iter()
            .zip(&v)
            .map(|(&x, &y)| {
                bf16::from_f32(bf16::from_f32(x).to_f32() + bf16::from_f32(y).to_f32()).to_f32()
            })
            .collect();
        assert_eq!(yb.to_vec_f32().unwrap(), wb);
        let e = a.accumulate(&b.reshaped(&[100, 10]).unwrap()).unwrap_err();
        assert!(e.to_string().contains("accumulate"), "{e}");
        let e = a.accumulate(&b.to_dtype(DType::BF16).unwrap()).unwrap_err();
        assert!(e.to_string().contains("accumulate"), "{e}");
    }

    /// On the GPU (`binary_f32` / `binary_bf16`, op add) `accumulate` is bit for bit the CPU's
    /// sum at awkward sizes, in f32 and bf16.
    #[test]
    fn accumulate_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for n in parity_sizes() {
            let (u, v) = (random_vec(n, 3), random_vec(n, 4));
            for dtype in [DType::F32, DType::BF16] {
                let on = |d: &Device| {
                    let a = Tensor::from_slice(&u, &[n], d)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap();
                    let b = Tensor::from_slice(&v, &[n], d)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap();
                    a.accumulate(&b).unwrap()
                };
                let (want, got) = (on(&Device::Cpu), on(&gpu));
                assert_eq!(got.dtype(), dtype);
                let (want, got) = (want.to_vec_f32().unwrap(), got.to_vec_f32().unwrap());
                for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{dtype:?} n={n} [{i}]: cpu {a}, {gpu} {b}"
                    );
                }
            }
        }
    }
}
