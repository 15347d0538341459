//! The CUDA simulator (`sim/`) catches the bugs a GPU would hide: kernels with planted bugs
//! (`sim/selftest/planted.cu`, built into the simulator only) fail with a report naming the
//! kernel, the block, the thread and what went wrong; their correct twins pass. The planted
//! kernels exist only in the simulator, so on a real GPU these tests are skipped (and logged so).

use std::sync::Arc;

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use mindreader::tensor::{Device, Gpu};
use mindreader::testing::{random_vec, simulator};

/// A kernel of `sim/selftest/planted.cu`, found by name as the driver finds any kernel.
fn planted(gpu: &Gpu, name: &str) -> CudaFunction {
    // The simulated driver takes any module image: a function is looked up by its name.
    let module = gpu
        .ctx
        .load_module(cudarc::nvrtc::Ptx::from_binary(
            b"sim/selftest/planted.cu".to_vec(),
        ))
        .unwrap();
    module.load_function(name).unwrap()
}

fn sim() -> Option<Arc<Gpu>> {
    match simulator()? {
        Device::Cuda(g) => Some(g),
        Device::Cpu => None,
    }
}

fn transpose(gpu: &Gpu, rows: u32, cols: u32, off_by_one: i32) -> Result<Vec<f32>, String> {
    let x = gpu
        .stream
        .clone_htod(&random_vec((rows * cols) as usize, 1))
        .unwrap();
    let mut y = gpu
        .stream
        .alloc_zeros::<f32>((rows * cols) as usize)
        .unwrap();
    let f = planted(gpu, "selftest_transpose");
    let cfg = LaunchConfig {
        grid_dim: (cols.div_ceil(32), rows.div_ceil(32), 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    let mut b = gpu.stream.launch_builder(&f);
    b.arg(&x).arg(&mut y).arg(&rows).arg(&cols).arg(&off_by_one);
    unsafe { b.launch(cfg) }.map_err(|e| e.to_string())?;
    Ok(gpu.stream.clone_dtoh(&y).unwrap())
}

#[test]
fn an_off_by_one_at_a_tile_edge_is_an_out_of_bounds_read() {
    let Some(gpu) = sim() else { return };
    let (rows, cols) = (33, 45);
    let y = transpose(&gpu, rows, cols, 0).expect("the correct transpose");
    let x = random_vec((rows * cols) as usize, 1);
    for r in 0..rows as usize {
        for c in 0..cols as usize {
            assert_eq!(y[c * rows as usize + r], x[r * cols as usize + c]);
        }
    }
    let err = transpose(&gpu, rows, cols, 1).expect_err("the planted off-by-one must be caught");
    eprintln!("{err}");
    assert!(
        err.contains("out-of-bounds device read of 4 bytes"),
        "{err}"
    );
    assert!(
        err.contains("0 bytes past the end") || err.contains("bytes past the end of allocation"),
        "{err}"
    );
    assert!(
        err.contains("kernel selftest_transpose")
            && err.contains("block (")
            && err.contains("thread ("),
        "{err}"
    );
}

#[test]
fn a_missing_barrier_is_a_shared_memory_race() {
    let Some(gpu) = sim() else { return };
    let n = 1000u32;
    let xv = random_vec(n as usize, 2);
    let x = gpu.stream.clone_htod(&xv).unwrap();
    let f = planted(&gpu, "selftest_block_reverse");
    let run = |missing: i32| -> Result<Vec<f32>, String> {
        let mut y = gpu.stream.alloc_zeros::<f32>(n as usize).unwrap();
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&x).arg(&mut y).arg(&n).arg(&missing);
        unsafe { b.launch(cfg) }.map_err(|e| e.to_string())?;
        Ok(gpu.stream.clone_dtoh(&y).unwrap())
    };
    let y = run(0).expect("with the barrier");
    for (i, v) in y.iter().enumerate() {
        let (block, t) = (i / 256, i % 256);
        let src = block * 256 + (255 - t);
        assert_eq!(
            *v,
            if src < n as usize { xv[src] } else { 0.0 },
            "element {i}"
        );
    }
    let err = run(1).expect_err("the missing barrier must be caught");
    eprintln!("{err}");
    assert!(
        err.contains("racecheck:") && err.contains("hazard on static shared memory"),
        "{err}"
    );
    assert!(
        err.contains("Read-after-Write") || err.contains("Write-after-Read"),
        "{err}"
    );
    assert!(err.contains("kernel selftest_block_reverse"), "{err}");
}

#[test]
fn a_write_past_the_end_is_caught_before_it_lands() {
    let Some(gpu) = sim() else { return };
    let n = 4097u32;
    let x = gpu.stream.clone_htod(&random_vec(n as usize, 3)).unwrap();
    let mut y = gpu.stream.alloc_zeros::<f32>(n as usize).unwrap();
    let f = planted(&gpu, "selftest_scale");
    let launch = |y: &mut cudarc::driver::CudaSlice<f32>, past_end: i32| {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&x).arg(y).arg(&n).arg(&past_end);
        unsafe {
            b.launch(LaunchConfig {
                grid_dim: (4, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .map_err(|e| e.to_string())
    };
    launch(&mut y, 0).expect("the correct kernel");
    let err = launch(&mut y, 1).expect_err("the write past the end must be caught");
    eprintln!("{err}");
    assert!(
        err.contains("out-of-bounds device write of 4 bytes"),
        "{err}"
    );
    assert!(
        err.contains("4 bytes past the end of allocation") && err.contains("(16388 bytes"),
        "{err}"
    );
    assert!(err.contains("kernel selftest_scale"), "{err}");
}

#[test]
fn warp_shuffles_and_ballots_follow_their_definitions() {
    let Some(gpu) = sim() else { return };
    let n = 1000u32;
    let xv = random_vec(n as usize, 4);
    let x = gpu.stream.clone_htod(&xv).unwrap();
    let mut sums = gpu.stream.alloc_zeros::<f32>(n as usize).unwrap();
    let mut ballots = gpu
        .stream
        .alloc_zeros::<u32>(n.div_ceil(32) as usize)
        .unwrap();
    let f = planted(&gpu, "selftest_warp_ops");
    let mut b = gpu.stream.launch_builder(&f);
    b.arg(&x).arg(&mut sums).arg(&mut ballots).arg(&n);
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (4, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .unwrap();
    let sums = gpu.stream.clone_dtoh(&sums).unwrap();
    let ballots = gpu.stream.clone_dtoh(&ballots).unwrap();
    for w in 0..n.div_ceil(32) as usize {
        let lanes = &xv[w * 32..((w + 1) * 32).min(n as usize)];
        let want: f32 = lanes.iter().sum();
        let ballot = lanes
            .iter()
            .enumerate()
            .fold(0u32, |m, (l, &v)| if v > 0.0 { m | 1 << l } else { m });
        assert_eq!(ballots[w], ballot, "warp {w}");
        for l in 0..lanes.len() {
            assert!(
                (sums[w * 32 + l] - want).abs() < 1e-5,
                "warp {w} lane {l}: {} vs {want}",
                sums[w * 32 + l]
            );
        }
    }
}

#[test]
fn the_simulated_device_says_what_it_is() {
    let Some(gpu) = sim() else { return };
    let d = Device::Cuda(gpu.clone());
    assert!(d.is_simulated());
    assert!(d.to_string().contains("simulated"), "{d}");
    assert!(gpu.name().contains("not a GPU"), "{}", gpu.name());
    // auto never picks the simulator: it is slower than the CPU twins.
    assert!(!Device::best().is_cuda());
}

#[test]
fn a_captured_graph_replays_on_fresh_inputs_and_refuses_host_traffic() {
    use mindreader::autograd::Tape;
    use mindreader::ops::elementwise as ew;
    use mindreader::tensor::Tensor;
    // On a stream of its own: the other tests of this binary run in parallel on the shared one.
    let (Some(_), Some(d)) = (sim(), mindreader::testing::gpu_own_stream()) else {
        return;
    };
    let Device::Cuda(gpu) = d.clone() else { return };
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[3], &d).unwrap();
    let y = Tensor::zeros(&[3], &d).unwrap();
    let (graph, ()) = gpu
        .capture(|| {
            let mut off = Tape::inference();
            let doubled = ew::scale(&mut off, &x, 2.0)?;
            y.copy_from(&doubled)
        })
        .unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), [0.0; 3], "a capture runs nothing");
    graph.launch().unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), [2.0, 4.0, 6.0]);
    // A replay reads what its inputs hold now.
    x.copy_from(&Tensor::from_vec(vec![5.0, 6.0, 7.0], &[3], &d).unwrap())
        .unwrap();
    graph.launch().unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), [10.0, 12.0, 14.0]);
    // What a graph cannot hold fails with a reason, and the stream still works afterwards.
    let upload = gpu.capture(|| Tensor::from_vec(vec![1.0], &[1], &d).map(|_| ()));
    let e = upload.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("inside a CUDA graph capture"), "{e}");
    let read_back = gpu.capture(|| x.to_vec_f32().map(|_| ()));
    assert!(read_back.is_err(), "a device-to-host copy inside a capture");
    assert_eq!(x.to_vec_f32().unwrap(), [5.0, 6.0, 7.0]);
    // A body that panics leaves no capture open: uploads and captures work again after it.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gpu.capture(|| -> mindreader::Result<()> { panic!("a failing capture body") })
    }));
    assert!(panicked.is_err());
    assert!(!gpu.is_capturing());
    let z = Tensor::from_vec(vec![4.0], &[1], &d).unwrap();
    let (again, ()) = gpu.capture(|| y.copy_from(&x)).unwrap();
    again.launch().unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), [5.0, 6.0, 7.0]);
    assert_eq!(z.to_vec_f32().unwrap(), [4.0]);
    // The legacy NULL stream cannot be captured (the engine queues on a stream of its own).
    let r = unsafe {
        cudarc::driver::sys::cuStreamBeginCapture_v2(
            std::ptr::null_mut(),
            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL,
        )
    };
    assert_eq!(
        r,
        cudarc::driver::sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
    );
}
