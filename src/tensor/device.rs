//! Where a tensor lives: the host, or one CUDA GPU with its stream and loaded kernel modules.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, DeviceRepr,
    LaunchConfig, PushKernelArg,
};

use crate::error::{Error, Result};
use crate::kernels;

#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(Arc<Gpu>),
}

impl Device {
    /// The CUDA GPU of that ordinal, or an error saying why there is none (never a panic).
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Ok(Device::Cuda(Gpu::open(ordinal)?))
    }

    /// The first GPU when one is usable and this binary holds kernels for it, else the CPU. The
    /// CUDA simulator is never picked here (it is slower than the CPU twins): ask for it by name.
    pub fn best() -> Device {
        if crate::kernels::KERNELS.is_empty() {
            return Device::Cpu;
        }
        match Device::cuda(0) {
            Ok(d) if !d.is_simulated() => d,
            _ => Device::Cpu,
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// True on the CUDA simulator (`sim/`): kernels run on the CPU, its times are not GPU times.
    pub fn is_simulated(&self) -> bool {
        matches!(self, Device::Cuda(g) if g.is_simulated())
    }

    /// What the device is: "cpu", the GPU's name, or the simulator's.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Cuda(g) => g.name(),
        }
    }

    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Cuda(a), Device::Cuda(b)) => a.ordinal == b.ordinal,
            _ => false,
        }
    }

    /// Waits for all queued GPU work (no-op on the CPU).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(gpu) => gpu
                .stream
                .synchronize()
                .map_err(|e| Error::cuda("synchronize", e)),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(g) if g.is_simulated() => write!(f, "cuda:{} (simulated)", g.ordinal),
            Device::Cuda(g) => write!(f, "cuda:{}", g.ordinal),
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How the CUDA simulator's stand-in driver names its device (sim/driver.cpp).
pub const SIMULATOR_NAME: &str = "mindreader CUDA simulator";

/// Set by the parity tests: every kernel output buffer is filled with NaN before the kernel
/// runs, so a kernel that forgets to write an element cannot pass by luck.
static POISON_OUTPUTS: AtomicBool = AtomicBool::new(false);

pub fn set_poison_outputs(on: bool) {
    POISON_OUTPUTS.store(on, Ordering::SeqCst);
}

/// A capture that `body` left by panicking: unwinding through it ends the capture (discarding
/// the graph) and clears the flag, so the stream and later uploads work again.
struct OpenCapture<'a>(&'a Gpu);

impl Drop for OpenCapture<'_> {
    fn drop(&mut self) {
        self.0.capturing.store(false, Ordering::SeqCst);
        let flags = cudarc::driver::sys::CUgraphInstantiate_flags(0);
        let _ = self.0.stream.end_capture(flags);
    }
}

/// One GPU: its context, the stream every op is queued on, and the kernel modules loaded so far.
pub struct Gpu {
    pub ordinal: usize,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    simulated: bool,
    /// While `capture` records a graph: uploads are refused (a graph cannot copy from the host).
    capturing: AtomicBool,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    /// The dynamic shared memory each function has been opted into (see
    /// `function_with_shared_memory`).
    shared_opted: Mutex<HashMap<(&'static str, &'static str), u32>>,
}

/// Every buffer comes from the device's default memory pool (stream-ordered allocation), which
/// by default hands freed memory back to the driver at each synchronisation (release threshold
/// 0): every training step would map its activations afresh. A threshold of `u64::MAX` keeps
/// what a step frees in the pool for the next one, a caching allocator like PyTorch's.
fn keep_freed_memory(ctx: &CudaContext) -> Result<()> {
    let mut threshold = u64::MAX;
    // SAFETY: the device is the context's; the attribute is a u64 and `threshold` outlives the call.
    unsafe {
        let pool = cudarc::driver::result::device::get_default_mem_pool(ctx.cu_device())
            .map_err(|e| Error::cuda("finding the device's memory pool", e))?;
        cudarc::driver::result::mem_pool::set_attribute(
            pool,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .map_err(|e| Error::cuda("keeping freed memory in the device's pool", e))
    }
}

/// Why no GPU can be used here, or None when one can.
pub fn why_no_gpu() -> Option<String> {
    // cudarc panics when libcuda is absent; ask first.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("libcuda (the NVIDIA driver library) is not present on this machine".into());
    }
    match std::panic::catch_unwind(CudaContext::device_count) {
        Ok(Ok(0)) => Some("the NVIDIA driver reports no CUDA devices".into()),
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("the NVIDIA driver failed to initialise: {e}")),
        Err(_) => Some("the NVIDIA driver library could not be loaded".into()),
    }
}

impl Gpu {
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        if let Some(why) = why_no_gpu() {
            return Err(Error::NoGpu(why));
        }
        let count = CudaContext::device_count().map_err(|e| Error::NoGpu(e.to_string()))?;
        if ordinal >= count as usize {
            return Err(Error::NoGpu(format!(
                "asked for cuda:{ordinal} but the driver reports {count} device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::NoGpu(format!("creating a context on cuda:{ordinal}: {e}")))?;
        // A stream of our own, not the legacy default one, which CUDA cannot capture into a
        // graph. Every op is queued on this one stream, so cudarc's per-buffer events (which
        // order work across streams, and which a capture cannot hold) are not needed.
        let stream = ctx
            .new_stream()
            .map_err(|e| Error::NoGpu(format!("creating a stream on cuda:{ordinal}: {e}")))?;
        // SAFETY: all work is queued on `stream` alone (see above).
        unsafe { ctx.disable_event_tracking() };
        let simulated = ctx.name().is_ok_and(|n| n.starts_with(SIMULATOR_NAME));
        if ctx.has_async_alloc() {
            keep_freed_memory(&ctx)?;
        }
        Ok(Arc::new(Gpu {
            ordinal,
            ctx,
            stream,
            simulated,
            capturing: AtomicBool::new(false),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            shared_opted: Mutex::new(HashMap::new()),
        }))
    }

    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// True when the driver library is mindreader's CUDA simulator (`sim/`), which names itself so.
    pub fn is_simulated(&self) -> bool {
        self.simulated
    }

    /// How much freed memory the device's pool keeps before it returns memory to the driver
    /// (`u64::MAX`: all of it), or None when the device has no stream-ordered allocation.
    pub fn pool_release_threshold(&self) -> Result<Option<u64>> {
        if !self.ctx.has_async_alloc() {
            return Ok(None);
        }
        let mut threshold = 0u64;
        // SAFETY: as in `keep_freed_memory`.
        unsafe {
            let pool = cudarc::driver::result::device::get_default_mem_pool(self.ctx.cu_device())
                .map_err(|e| Error::cuda("finding the device's memory pool", e))?;
            cudarc::driver::result::mem_pool::get_attribute(
                pool,
                cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
            .map_err(|e| Error::cuda("reading the device pool's release threshold", e))?;
        }
        Ok(Some(threshold))
    }

    /// The kernel `name` from `kernels/<family>.cu`, loading the family's module on first use.
    pub fn function(&self, family: &'static str, name: &'static str) -> Result<CudaFunction> {
        let mut functions = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = functions.get(&(family, name)) {
            return Ok(f.clone());
        }
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match modules.get(family) {
                Some(m) => m.clone(),
                None => {
                    let k = kernels::find(family)
                        .ok_or_else(|| Error::MissingKernel(family.to_string()))?;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_binary(k.fatbin.to_vec()))
                        .map_err(|e| Error::cuda(format!("loading kernels/{family}.cu"), e))?;
                    modules.insert(family, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(name)
            .map_err(|e| Error::cuda(format!("finding kernel {name} in kernels/{family}.cu"), e))?;
        functions.insert((family, name), f.clone());
        Ok(f)
    }

    /// `function`, opted into `bytes` of dynamic shared memory (above the 48 KiB a kernel gets
    /// by default; Hopper allows 227 KiB per block). The attribute is set once per function and
    /// size, not at every launch.
    pub fn function_with_shared_memory(
        &self,
        family: &'static str,
        name: &'static str,
        bytes: u32,
    ) -> Result<CudaFunction> {
        let f = self.function(family, name)?;
        let mut opted = self.shared_opted.lock().unwrap_or_else(|p| p.into_inner());
        if opted.get(&(family, name)).is_some_and(|&b| b >= bytes) {
            return Ok(f);
        }
        use cudarc::driver::sys::CUfunction_attribute as Attr;
        f.set_attribute(
            Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| Error::cuda(name, e))?;
        opted.insert((family, name), bytes);
        Ok(f)
    }

    /// Records what `body` queues on the stream as a CUDA graph, without running it, and
    /// instantiates it: `graph.launch()` then replays every kernel, copy, memset and allocation
    /// of `body` with one call. Nothing `body` allocates may outlive it, nothing it did not
    /// allocate may be freed in it, and it may not copy from or to the host (an upload fails with
    /// a clear error; the driver refuses the rest). On an error the capture is abandoned. The
    /// capture is thread-local: other threads' work on other streams goes on meanwhile.
    pub fn capture<T>(&self, body: impl FnOnce() -> Result<T>) -> Result<(CudaGraph, T)> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| Error::cuda("beginning a CUDA graph capture", e))?;
        self.capturing.store(true, Ordering::SeqCst);
        let open = OpenCapture(self);
        let out = body();
        std::mem::forget(open);
        self.capturing.store(false, Ordering::SeqCst);
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        let out = out?;
        match graph {
            Ok(Some(g)) => Ok((g, out)),
            Ok(None) => Err(Error::Invalid(
                "the CUDA graph capture recorded nothing".into(),
            )),
            Err(e) => Err(Error::cuda("ending a CUDA graph capture", e)),
        }
    }

    /// True while `capture` is recording.
    pub fn is_capturing(&self) -> bool {
        self.capturing.load(Ordering::SeqCst)
    }

    /// An output buffer of `n` elements (at least one, so empty tensors still own a buffer).
    /// Uninitialised, or NaN-filled while parity tests poison outputs.
    pub fn alloc<T: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>> {
        let mut buf = unsafe { self.stream.alloc::<T>(n.max(1)) }
            .map_err(|e| Error::cuda(format!("allocating {n} elements"), e))?;
        if POISON_OUTPUTS.load(Ordering::SeqCst) {
            self.fill_bytes(&mut buf, 0xFF)?;
        }
        Ok(buf)
    }

    /// A zero-filled buffer of `n` elements.
    pub fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| Error::cuda(format!("allocating {n} zeros"), e))
    }

    /// A buffer of `n` copies of `value` (one 32-bit memset).
    pub fn filled(&self, n: usize, value: f32) -> Result<CudaSlice<f32>> {
        use cudarc::driver::DevicePtrMut;
        let mut buf = unsafe { self.stream.alloc::<f32>(n.max(1)) }
            .map_err(|e| Error::cuda(format!("allocating {n} elements"), e))?;
        let (ptr, sync) = buf.device_ptr_mut(&self.stream);
        // SAFETY: writes n.max(1) 4-byte words inside the buffer just allocated on this stream.
        let r = unsafe {
            cudarc::driver::sys::cuMemsetD32Async(
                ptr,
                value.to_bits(),
                n.max(1),
                self.stream.cu_stream(),
            )
        };
        drop(sync);
        r.result().map_err(|e| Error::cuda("filling a buffer", e))?;
        Ok(buf)
    }

    /// Sets every byte of `buf` (NaN for 0xFF in every float format).
    pub fn fill_bytes<T: DeviceRepr>(&self, buf: &mut CudaSlice<T>, byte: u8) -> Result<()> {
        let n_bytes = buf.num_bytes();
        let f = self.function("elementwise", "fill_bytes")?;
        let n = n_bytes as u64;
        let b = byte as u32;
        let cfg = launch_1d(n_bytes);
        // SAFETY: fill_bytes(u8* p, u64 n, u32 byte) writes n bytes inside buf.
        unsafe {
            self.stream
                .launch_builder(&f)
                .arg(buf)
                .arg(&n)
                .arg(&b)
                .launch(cfg)
        }
        .map_err(|e| Error::cuda("fill_bytes", e))?;
        Ok(())
    }
}

/// Launches `kernels/<family>.cu::<kernel>` on the GPU's stream with the given arguments, in
/// order, mapping a launch failure to an error naming the kernel. Each call site states why its
/// arguments are in bounds (the launch itself is `unsafe`: the kernel trusts its sizes).
macro_rules! launch {
    ($gpu:expr, $family:literal, $kernel:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let f = $gpu.function($family, $kernel)?;
        let mut b = $gpu.stream.launch_builder(&f);
        $( cudarc::driver::PushKernelArg::arg(&mut b, $arg); )*
        unsafe { b.launch($cfg) }.map(|_| ()).map_err(|e| $crate::error::Error::cuda($kernel, e))
    }};
}
pub(crate) use launch;

/// A 1-D launch of 256-thread blocks covering `n` elements (grid capped; kernels grid-stride).
pub fn launch_1d(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65535 * 8) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}
