//! The kernel benchmark (llm.c style): each case first validates the device's result against the
//! CPU twin on the same inputs, then times the op — CUDA events around each run on a GPU (wall
//! clock on the CPU), a warm-up, then the median of many runs — and reports TFLOP/s and GB/s
//! from FLOPs and bytes counted by hand (the minimum traffic: each input read once, each output
//! written once). `benches/torch_reference.py` times the same cases in PyTorch.

mod lafite;
pub mod report;

use std::time::Instant;

use crate::error::{Error, Result};
use crate::models::clip::{Clip, ClipConfig};
use crate::models::{Mapper, MapperConfig};
use crate::nn::ParamStore;
use crate::ops::precision::{self, Precision};
use crate::ops::{attention, conv1d, layernorm, loss, matmul, softmax};
use crate::tensor::{randn_vec, DType, Device, Tensor};
use crate::train::adam::StagedAdam;
use crate::train::{Adam, AdamConfig};
use crate::Tape;

/// The two halves of `bench --suite`: single kernels (or fused op pairs), and whole model steps
/// (a training step, an encoder's forward) whose time is many kernels and their launch gaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Kernels,
    Models,
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::Kernels => "kernels",
            Suite::Models => "models",
        }
    }
}

/// One timed workload: fixed shapes, counted FLOPs and bytes.
pub struct Case {
    pub name: String,
    pub flops: f64,
    pub bytes: f64,
    /// Relative tolerance of the validation against the CPU twin.
    pub rtol: f32,
    /// The floor under |cpu| in that relative error (1e-3 unless a case's rounding is absolute).
    pub floor: f32,
    pub suite: Suite,
    /// A plain matrix product: the fastest of these is the run's FLOP/s peak.
    pub gemm: bool,
    setup: Setup,
}

impl Case {
    /// This case as a whole model step.
    fn model_step(mut self) -> Case {
        self.suite = Suite::Models;
        self
    }

    /// Validation with |device − cpu| / (|cpu| + floor): for a kernel whose rounding error is
    /// absolute (a fraction of the inputs' scale) rather than relative to each output.
    fn error_floor(mut self, floor: f32) -> Case {
        self.floor = floor;
        self
    }

    /// This case as a plain GEMM (a candidate for the run's FLOP/s peak).
    fn peak_gemm(mut self) -> Case {
        self.gemm = true;
        self
    }
}

/// One timed run of a case: its output (for validation), if it has one.
type Run = Box<dyn FnMut() -> Result<Option<Tensor>>>;
/// Builds a case's inputs on a device and returns the run to time.
type Setup = Box<dyn Fn(&Device) -> Result<Run>>;

#[derive(Clone, Debug)]
pub struct Measurement {
    pub name: String,
    pub device: String,
    pub suite: Suite,
    pub gemm: bool,
    pub median_ms: f64,
    pub min_ms: f64,
    pub tflops: f64,
    pub gbps: f64,
    /// Largest |device − cpu| / (|cpu| + the case's floor) seen in validation, or None if not
    /// validated.
    pub max_rel_err: Option<f32>,
}

fn input(shape: &[usize], seed: u64, device: &Device, dtype: DType) -> Result<Tensor> {
    Tensor::from_vec(randn_vec(shape.iter().product(), 1.0, seed), shape, device)?.to_dtype(dtype)
}

/// An f32 input of a product run at precision `p`: on the CPU (which computes in f32) already
/// rounded as the tensor cores will see it, so the validation measures only the kernel.
fn operand_at(p: Precision, shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    let t = input(shape, seed, device, DType::F32)?;
    match device {
        Device::Cpu => {
            Tensor::from_vec(precision::round_operand(p, &t.to_vec_f32()?), shape, device)
        }
        Device::Cuda(_) => Ok(t),
    }
}

fn case(
    name: String,
    flops: f64,
    bytes: f64,
    rtol: f32,
    setup: impl Fn(&Device) -> Result<Run> + 'static,
) -> Case {
    Case {
        name,
        flops,
        bytes,
        rtol,
        floor: 1e-3,
        suite: Suite::Kernels,
        gemm: false,
        setup: Box::new(setup),
    }
}

/// The cases `mindreader bench` runs; `quick` shrinks them for smoke tests on a CPU.
pub fn cases(quick: bool) -> Result<Vec<Case>> {
    let s = |full: usize, small: usize| if quick { small } else { full };
    let mut out = Vec::new();
    for (dtype, tag) in [(DType::F32, "f32"), (DType::BF16, "bf16")] {
        let (m, n, k) = (s(4096, 96), s(4096, 80), s(4096, 72));
        out.push(
            case(
                format!("matmul {tag} {m}x{n}x{k}"),
                2.0 * (m * n * k) as f64,
                ((m * k + k * n + m * n) * dtype.size()) as f64,
                if dtype == DType::F32 { 1e-3 } else { 3e-2 },
                move |d| {
                    let (a, b) = (input(&[m, k], 1, d, dtype)?, input(&[k, n], 2, d, dtype)?);
                    Ok(Box::new(move || {
                        Ok(Some(matmul::matmul(
                            &mut Tape::inference(),
                            &a,
                            &b,
                            false,
                            false,
                        )?))
                    }))
                },
            )
            .peak_gemm(),
        );
    }
    // f32 tensors on the tensor cores (--precision tf32|bf16), as a forward product (A·B) and as
    // a weight gradient's (Aᵀ·B: the operand read across its contiguous axis). These shapes take
    // the cp.async-pipelined kernels; the A·B rows also run on the register-staged ones.
    for p in [Precision::Tf32, Precision::Bf16] {
        for (trans_a, staged) in [(false, false), (true, false), (false, true)] {
            let (m, n, k) = (s(4096, 96), s(4096, 80), s(4096, 72));
            let a_desc = if trans_a { "ᵀ" } else { "" };
            let variant = if staged { " register-staged" } else { "" };
            out.push(
                case(
                    format!("matmul f32 --precision {p} A{a_desc}·B{variant} {m}x{n}x{k}"),
                    2.0 * (m * n * k) as f64,
                    (4 * (m * k + k * n + m * n)) as f64,
                    1e-3,
                    move |d| {
                        let a_shape = if trans_a { [k, m] } else { [m, k] };
                        let (a, b) = (
                            operand_at(p, &a_shape, 1, d)?,
                            operand_at(p, &[k, n], 2, d)?,
                        );
                        Ok(Box::new(move || {
                            at_precision(p, staged, || {
                                let mut tape = Tape::inference();
                                Ok(Some(matmul::matmul(&mut tape, &a, &b, trans_a, false)?))
                            })
                        }))
                    },
                )
                .peak_gemm(),
            );
        }
    }
    // The mapper's residual conv: [B, 64, V/2] with k3 p1, V = 15744; on the tensor cores too,
    // through the cp.async-pipelined implicit GEMM and (for comparison) the register-staged one.
    let (b, c, l) = (s(128, 2), s(64, 8), s(7872, 50));
    let staged_too = [Precision::Tf32, Precision::Bf16].map(|p| (p, true));
    for (p, staged) in Precision::ALL
        .map(|p| (p, false))
        .into_iter()
        .chain(staged_too)
    {
        out.push(case(
            format!("conv1d k3{} [{b},{c},{l}]", precision_tag(p, staged)),
            2.0 * (b * c * l * c * 3) as f64,
            (4 * (2 * b * c * l + c * c * 3)) as f64,
            1e-3,
            move |d| {
                let (x, w) = (
                    operand_at(p, &[b, c, l], 3, d)?,
                    operand_at(p, &[c, c, 3], 4, d)?,
                );
                Ok(Box::new(move || {
                    at_precision(p, staged, || {
                        let mut tape = Tape::inference();
                        Ok(Some(conv1d::conv1d(&mut tape, &x, &w, None, 1, 1)?))
                    })
                }))
            },
        ));
    }
    // A residual block's last conv as the mapper runs it, relu(conv(x) + bias + x), with the
    // bias, residual add and ReLU in the conv's epilogue, and as the three separate ops: the
    // fused row moves x, w, bias, the residual and y once; the separate ones three more
    // activations each way.
    for fused in [true, false] {
        let act = (4 * b * c * l) as f64;
        out.push(case(
            format!(
                "conv1d k3 +bias+residual+relu {} [{b},{c},{l}]",
                if fused { "fused" } else { "separate" }
            ),
            2.0 * (b * c * l * c * 3) as f64,
            if fused { 3.0 * act } else { 9.0 * act } + (4 * c * c * 3) as f64,
            1e-3,
            move |d| {
                let x = input(&[b, c, l], 3, d, DType::F32)?;
                let w = input(&[c, c, 3], 4, d, DType::F32)?;
                let bias = input(&[c], 5, d, DType::F32)?;
                Ok(Box::new(move || {
                    let mut tape = Tape::inference();
                    let y = if fused {
                        let epi = conv1d::Epilogue {
                            bias: Some(&bias),
                            residual: Some(&x),
                            relu: true,
                        };
                        conv1d::conv1d_fused(&mut tape, &x, &w, 1, 1, epi)?
                    } else {
                        let y = conv1d::conv1d(&mut tape, &x, &w, Some(&bias), 1, 1)?;
                        let y = crate::ops::elementwise::add(&mut tape, &y, &x)?;
                        crate::ops::elementwise::relu(&mut tape, &y)?
                    };
                    Ok(Some(y))
                }))
            },
        ));
    }
    // The mapper's stem: [B, 1, V] → [B, 64, V/2] with k4 s2 p1.
    let (v, co) = (s(15744, 64), s(64, 8));
    out.push(case(
        format!("conv1d stem k4s2 [{b},1,{v}]"),
        2.0 * (b * co * (v / 2) * 4) as f64,
        (4 * (b * v + b * co * v / 2)) as f64,
        1e-3,
        move |d| {
            let (x, w) = (
                input(&[b, 1, v], 5, d, DType::F32)?,
                input(&[co, 1, 4], 6, d, DType::F32)?,
            );
            Ok(Box::new(move || {
                Ok(Some(conv1d::conv1d(
                    &mut Tape::inference(),
                    &x,
                    &w,
                    None,
                    2,
                    1,
                )?))
            }))
        },
    ));
    for (rows, cols) in [(s(4096, 17), s(4096, 33)), (s(128 * 12 * 50, 30), 50)] {
        out.push(case(
            format!("softmax {rows}x{cols}"),
            5.0 * (rows * cols) as f64,
            (8 * rows * cols) as f64,
            1e-4,
            move |d| {
                let x = input(&[rows, cols], 7, d, DType::F32)?;
                Ok(Box::new(move || {
                    Ok(Some(softmax::softmax(&mut Tape::inference(), &x)?))
                }))
            },
        ));
    }
    let (rows, cols) = (s(256 * 50, 19), s(768, 40));
    out.push(case(
        format!("layer_norm {rows}x{cols}"),
        8.0 * (rows * cols) as f64,
        (8 * rows * cols + 8 * cols) as f64,
        1e-4,
        move |d| {
            let (x, g, b) = (
                input(&[rows, cols], 8, d, DType::F32)?,
                input(&[cols], 9, d, DType::F32)?,
                input(&[cols], 10, d, DType::F32)?,
            );
            Ok(Box::new(move || {
                Ok(Some(layernorm::layer_norm(
                    &mut Tape::inference(),
                    &x,
                    Some(&g),
                    Some(&b),
                    1e-5,
                )?))
            }))
        },
    ));
    // The residual add fused with the norm after it (CLIP's mid-layer step): reads x, r, writes s, y.
    out.push(case(
        format!("add+layer_norm {rows}x{cols}"),
        9.0 * (rows * cols) as f64,
        (16 * rows * cols + 8 * cols) as f64,
        1e-4,
        move |d| {
            let (x, r) = (
                input(&[rows, cols], 11, d, DType::F32)?,
                input(&[rows, cols], 12, d, DType::F32)?,
            );
            let (g, b) = (
                input(&[cols], 9, d, DType::F32)?,
                input(&[cols], 10, d, DType::F32)?,
            );
            Ok(Box::new(move || {
                Ok(Some(
                    layernorm::add_layer_norm(
                        &mut Tape::inference(),
                        &x,
                        &r,
                        Some(&g),
                        Some(&b),
                        1e-5,
                    )?
                    .1,
                ))
            }))
        },
    ));
    // Adam over the two mappers' parameter shapes (~2 × 1.16M elements in 38 tensors).
    let sizes: Vec<usize> = if quick {
        vec![7, 300, 33]
    } else {
        mapper_param_sizes()
            .into_iter()
            .chain(mapper_param_sizes())
            .collect()
    };
    let total: usize = sizes.iter().sum();
    out.push(case(
        format!("adam {} tensors {total} params", sizes.len()),
        12.0 * total as f64,
        28.0 * total as f64,
        1e-4,
        move |d| {
            let mut store = ParamStore::new();
            for (i, &n) in sizes.iter().enumerate() {
                let p =
                    store.insert(&format!("p{i}"), input(&[n], 20 + i as u64, d, DType::F32)?)?;
                let _ = p;
            }
            for (i, p) in store.iter_mut().enumerate() {
                p.grad = Some(input(p.value.shape(), 500 + i as u64, d, DType::F32)?);
            }
            let mut adam = Adam::new(AdamConfig::adam(1e-4, 1e-5));
            // Adam updates in place: validation compares the first step's parameters.
            Ok(Box::new(move || {
                adam.step(&mut store, 1e-4)?;
                Ok(store.iter().next().map(|p| p.value.clone()))
            }))
        },
    ));
    // The mapper's default loss, forward + backward (the gradient of the prediction is the
    // output): mse_cos_contrastive with Mind Reader's weights, B = 128, D = 512. The B×B
    // similarity product dominates the FLOPs; the traffic is a few passes over [B, D].
    let (lb, ld) = (s(128, 6), s(512, 24));
    out.push(case(
        format!("mse_cos_contrastive fwd+bwd B={lb} D={ld}"),
        2.0 * 2.0 * (lb * lb * ld) as f64,
        (4 * 4 * lb * ld) as f64,
        1e-3,
        move |d| {
            let (x, t) = (
                input(&[lb, ld], 40, d, DType::F32)?,
                input(&[lb, ld], 41, d, DType::F32)?,
            );
            Ok(Box::new(move || {
                let mut tape = Tape::new();
                tape.watch(&x);
                let l = loss::mse_cos_contrastive(&mut tape, &x, &t, &loss::LossConfig::default())?;
                let g = tape.backward(&l)?;
                Ok(g.get(&x).cloned())
            }))
        },
    ));
    // One Mind Reader mapper training step: forward, mse_cos loss, backward, Adam (f32); then the
    // same step replayed from one CUDA graph (`Gpu::capture`, as `train-mapper` does for full
    // batches): the difference is what launching every op from the host costs. The CPU twin
    // runs the step op by op.
    let (batch, voxels) = (s(128, 4), s(15744, 64));
    let mcfg = MapperConfig::mind_reader(voxels, 512);
    let flops = 3.0 * batch as f64 * mapper_forward_flops(&mcfg);
    for graph in [false, true] {
        for p in Precision::ALL {
            let tag = match p {
                Precision::F32 => String::new(),
                other => format!(" --precision {other}"),
            };
            let how = if graph { " CUDA graph" } else { "" };
            out.push(
                case(
                    format!("mapper train step f32{tag} B={batch} V={voxels}{how}"),
                    flops,
                    4.0 * (batch * voxels) as f64,
                    // The first step's loss against the f32 CPU twin: the operands' rounding.
                    match p {
                        Precision::F32 => 2e-3,
                        Precision::Tf32 => 1e-2,
                        Precision::Bf16 => 5e-2,
                    },
                    move |d| mapper_step_run(mcfg, batch, voxels, p, graph, d),
                )
                .model_step(),
            );
        }
    }
    // CLIP ViT-B/32 (Hugging Face default config, random weights): image and text encoding, f32.
    // Quick mode: a tiny CLIP of the same structure, so smoke tests stay fast on a CPU.
    let tiny = r#"{"projection_dim": 16, "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
        "num_hidden_layers": 2, "image_size": 64, "patch_size": 32}, "text_config": {"hidden_size": 32, "intermediate_size": 64,
        "num_attention_heads": 2, "num_hidden_layers": 2}}"#;
    let (json, tag) = if quick {
        (tiny, "tiny")
    } else {
        ("{}", "vit-b/32")
    };
    if let Ok(cfg) = ClipConfig::from_json(json, std::path::Path::new("<bench CLIP config>")) {
        let (bi, bt) = (s(64, 2), s(64, 2));
        let side = cfg.vision.image_size;
        let (img_flops, txt_flops) = clip_flops(&cfg);
        let c1 = cfg.clone();
        out.push(
            case(
                format!("clip {tag} image encode f32 B={bi}"),
                bi as f64 * img_flops,
                (4 * bi * 3 * side * side) as f64,
                2e-3,
                move |d| {
                    let clip = random_clip(&c1, d)?;
                    let x = input(&[bi, 3, side, side], 40, d, DType::F32)?;
                    Ok(Box::new(move || {
                        Ok(Some(clip.encode_image(&mut Tape::inference(), &x)?))
                    }))
                },
            )
            .model_step(),
        );
        let c2 = cfg.clone();
        out.push(
            case(
                format!("clip {tag} text encode f32 B={bt}"),
                bt as f64 * txt_flops,
                (4 * bt * 77) as f64,
                2e-3,
                move |d| {
                    let clip = random_clip(&c2, d)?;
                    let ids = bench_ids(bt);
                    Ok(Box::new(move || {
                        Ok(Some(clip.encode_text(&mut Tape::inference(), &ids, 77)?))
                    }))
                },
            )
            .model_step(),
        );
        // bf16 (weights and activations; f32 inside each op) at the issue's batch 256. The GPU and
        // the CPU twin round at different points through 12 layers, so validation is loose; the
        // table reports the error measured.
        let b16 = s(256, 2);
        let c3 = cfg.clone();
        out.push(
            case(
                format!("clip {tag} image encode bf16 B={b16}"),
                b16 as f64 * img_flops,
                (2 * b16 * 3 * side * side) as f64,
                0.25,
                move |d| {
                    let mut clip = random_clip(&c3, d)?;
                    clip.store.convert(DType::BF16)?;
                    let x = input(&[b16, 3, side, side], 40, d, DType::BF16)?;
                    Ok(Box::new(move || {
                        Ok(Some(clip.encode_image(&mut Tape::inference(), &x)?))
                    }))
                },
            )
            .model_step(),
        );
        let c4 = cfg.clone();
        out.push(
            case(
                format!("clip {tag} text encode bf16 B={b16}"),
                b16 as f64 * txt_flops,
                (4 * b16 * 77) as f64,
                0.25,
                move |d| {
                    let mut clip = random_clip(&c4, d)?;
                    clip.store.convert(DType::BF16)?;
                    let ids = bench_ids(b16);
                    Ok(Box::new(move || {
                        Ok(Some(clip.encode_text(&mut Tape::inference(), &ids, 77)?))
                    }))
                },
            )
            .model_step(),
        );
    }
    // Attention alone at CLIP-vision shapes: [B, 12 heads, 50 tokens, 64].
    // f32 on the SIMT kernel; bf16 on both kernels; f32 under --precision bf16 (the tensor cores,
    // validated against the CPU on rounded operands: P's rounding remains).
    let (ba, t) = (s(256, 2), s(50, 7));
    use attention::ForwardKernel::{Simt, TensorCore};
    // The tensor-core rows also round P to bf16 before P·V, an error of up to 2⁻⁹·max|v| (~0.01
    // here) on every output whatever its size: their relative error has a floor of 0.5.
    for (dtype, tag, kernel, p, rtol, floor) in [
        (DType::F32, "", Simt, Precision::F32, 1e-3, 1e-3),
        (DType::BF16, " bf16 simt", Simt, Precision::F32, 3e-2, 1e-3),
        (
            DType::BF16,
            " bf16 tensorcore",
            TensorCore,
            Precision::F32,
            3e-2,
            0.5,
        ),
        (
            DType::F32,
            " f32 --precision bf16",
            TensorCore,
            Precision::Bf16,
            3e-2,
            0.5,
        ),
    ] {
        let bytes = (4 * ba * 12 * t * 64 * dtype.size()) as f64;
        out.push(
            case(
                format!("attention{tag} [{ba},12,{t},64]"),
                4.0 * (ba * 12 * t * t * 64) as f64,
                bytes,
                rtol,
                move |d| {
                    let shape = [ba, 12, t, 64];
                    let (q, k, v) = if dtype == DType::F32 {
                        let x = |seed| operand_at(p, &shape, seed, d);
                        (x(50)?, x(51)?, x(52)?)
                    } else {
                        let x = |seed| input(&shape, seed, d, dtype);
                        (x(50)?, x(51)?, x(52)?)
                    };
                    Ok(Box::new(move || {
                        let (o, _lse) = attention::attention_raw_with(kernel, &q, &k, &v, false)?;
                        Ok(Some(o))
                    }))
                },
            )
            .error_floor(floor),
        );
    }
    // CLIP's MLP fc1 in bf16 (ViT-B/32 at batch 256: 12800 tokens, 768 → 3072, quick_gelu), both
    // GPU kernels of the bf16 linear.
    let (lm, lk, ln) = (s(256 * 50, 37), s(768, 40), s(3072, 24));
    for kernel in [matmul::Bf16Linear::Simt, matmul::Bf16Linear::TensorCore] {
        let name = format!(
            "linear bf16 {} [{lm}x{lk}]·[{ln}x{lk}]ᵀ+b quick_gelu",
            format!("{kernel:?}").to_lowercase()
        );
        out.push(case(
            name,
            2.0 * (lm * ln * lk) as f64,
            (2 * (lm * lk + ln * lk + lm * ln)) as f64,
            3e-2,
            move |d| {
                let (x, w, b) = (
                    input(&[lm, lk], 70, d, DType::BF16)?,
                    input(&[ln, lk], 71, d, DType::BF16)?,
                    input(&[ln], 72, d, DType::BF16)?,
                );
                let g = matmul::Gemm::new(&[lm, lk], &[ln, lk], false, true)?;
                Ok(Box::new(move || {
                    Ok(Some(
                        matmul::linear_act_raw_with(
                            kernel,
                            &x,
                            &w,
                            Some(&b),
                            Some(crate::ops::elementwise::Unary::QuickGelu),
                            &g,
                            false,
                        )?
                        .0,
                    ))
                }))
            },
        ));
    }
    // Attention forward + backward (what a training step through CLIP pays), both GPU backward
    // variants; validated on dQ, dK and dV together against the CPU twin.
    let bb = s(64, 2);
    for kernel in [
        attention::BackwardKernel::Composed,
        attention::BackwardKernel::Fused,
    ] {
        // Forward 4·T²·D per head; backward recomputes S and forms dV, dP, dQ, dK: 8·T²·D more.
        let flops = 12.0 * (bb * 12 * t * t * 64) as f64;
        out.push(case(
            format!("attention fwd+bwd {kernel:?} [{bb},12,{t},64]").to_lowercase(),
            flops,
            (4 * 9 * bb * 12 * t * 64) as f64,
            1e-3,
            move |d| {
                let x = |seed| input(&[bb, 12, t, 64], seed, d, DType::F32);
                let (q, k, v, g) = (x(60)?, x(61)?, x(62)?, x(63)?);
                Ok(Box::new(move || {
                    let (o, lse) = attention::attention_raw(&q, &k, &v, false)?;
                    let (dq, dk, dv) =
                        attention::attention_bwd_with(kernel, &q, &k, &v, &o, &lse, &g, false)?;
                    let flat = |t: &Tensor| t.reshaped(&[t.numel()]);
                    Ok(Some(crate::ops::concat::concat(
                        &mut Tape::inference(),
                        &[&flat(&dq)?, &flat(&dk)?, &flat(&dv)?],
                        0,
                    )?))
                }))
            },
        ));
    }
    out.extend(lafite::cases(quick)?);
    Ok(out)
}

/// `b` 77-token texts of pseudo-random ids, each ending in the EOS id (the highest).
fn bench_ids(b: usize) -> Vec<u32> {
    (0..b * 77)
        .map(|k| {
            if k % 77 == 76 {
                49407
            } else {
                ((k * 7919) % 49000) as u32
            }
        })
        .collect()
}

/// FLOPs of one image and one 77-token text through CLIP (2 per multiply-add): per layer and
/// token 24·d² for the projections and MLP (4× width), plus 4·T·d for attention.
pub fn clip_flops(c: &ClipConfig) -> (f64, f64) {
    let tower = |t: f64, d: f64, layers: f64, mlp: f64| {
        layers * (t * (8.0 * d * d + 4.0 * d * mlp) + 4.0 * t * t * d)
    };
    let v = &c.vision;
    let grid = (v.image_size / v.patch_size) as f64;
    let dv = v.tower.hidden_size as f64;
    let patches = 2.0 * grid * grid * (3 * v.patch_size * v.patch_size) as f64 * dv;
    let img = patches
        + tower(
            grid * grid + 1.0,
            dv,
            v.tower.num_hidden_layers as f64,
            v.tower.intermediate_size as f64,
        )
        + 2.0 * dv * c.projection_dim as f64;
    let tc = &c.text.tower;
    let txt = tower(
        77.0,
        tc.hidden_size as f64,
        tc.num_hidden_layers as f64,
        tc.intermediate_size as f64,
    ) + 2.0 * tc.hidden_size as f64 * c.projection_dim as f64;
    (img, txt)
}

/// A CLIP of this shape with `Clip::init_random` weights, the same on every device.
fn random_clip(cfg: &ClipConfig, d: &Device) -> Result<Clip> {
    let mut clip = Clip::zeros(cfg.clone(), d)?;
    clip.init_random(1)?;
    Ok(clip)
}

/// The bench's mapper training step at precision `p`: op by op, or (on a GPU, with `graph`)
/// captured once and replayed.
fn mapper_step_run(
    mcfg: MapperConfig,
    batch: usize,
    voxels: usize,
    p: Precision,
    graph: bool,
    d: &Device,
) -> Result<Run> {
    let mut store = ParamStore::new();
    let mapper = Mapper::new(mcfg, &mut store, 42, d)?;
    let mut adam = Adam::new(AdamConfig::adam(2e-4, 1e-5));
    let (x, t) = (
        input(&[batch, voxels], 30, d, DType::F32)?,
        input(&[batch, 512], 31, d, DType::F32)?,
    );
    // Forward, loss, backward; the gradients accumulated in `store`.
    let grads = move |store: &mut ParamStore| {
        let mut tape = Tape::new();
        store.watch_all(&mut tape);
        let y = mapper.forward(&mut tape, &x)?;
        let l = loss::mse_cos(&mut tape, &y, &t, 0.6)?;
        store.accumulate(&tape.backward(&l)?)?;
        Ok::<_, Error>(l)
    };
    let gpu = match d {
        Device::Cuda(gpu) if graph => gpu,
        _ => {
            return Ok(Box::new(move || {
                precision::with(p, || {
                    let l = grads(&mut store)?;
                    adam.step(&mut store, 2e-4)?;
                    store.zero_grad();
                    Ok(Some(l))
                })
            }))
        }
    };
    adam.ensure_moments(&store)?;
    let mut staged = StagedAdam::new(gpu, store.iter().count())?;
    let loss_out = Tensor::zeros(&[], d)?;
    let (graph, ()) = precision::with(p, || {
        gpu.capture(|| {
            let l = grads(&mut store)?;
            let updated = adam.record_staged(&mut store, &mut staged);
            store.zero_grad();
            updated?;
            loss_out.copy_from(&l)
        })
    })?;
    staged.flush()?;
    // The graph reads x, t and the weights where they are: keep them alive.
    let inputs = grads;
    Ok(Box::new(move || {
        let _ = &inputs;
        staged.stage(&mut adam, 2e-4)?;
        graph
            .launch()
            .map_err(|e| Error::cuda("replaying the mapper step graph", e))?;
        Ok(Some(loss_out.clone()))
    }))
}

/// Forward FLOPs of one sample through the mapper (2 per multiply-add; ~3.4 GFLOP at V = 15744).
pub fn mapper_forward_flops(c: &MapperConfig) -> f64 {
    let (h, l, d) = (c.hidden as f64, c.length() as f64, c.out_dim as f64);
    let stem = 2.0 * h * l * 4.0;
    let block = 2.0 * (2.0 * h * h * 3.0 * l) + 2.0 * h * h * l;
    let proj = 2.0 * d * h * l;
    let fc = 2.0 * c.fc_hidden as f64 * l * d + 2.0 * c.fc_hidden as f64 * d;
    stem + c.res_blocks as f64 * block + proj + fc
}

/// Parameter tensor sizes of one Mind Reader mapper (V = 15744; the layers of `models::mapper`).
fn mapper_param_sizes() -> Vec<usize> {
    let mut v = vec![64 * 4, 64];
    for _ in 0..4 {
        v.extend([64 * 64 * 3, 64, 64 * 64 * 3, 64, 64 * 64, 64]);
    }
    v.extend([512 * 64, 512, 128 * 7872, 128, 128, 1]);
    v
}

fn max_rel_err(got: &[f32], want: &[f32], floor: f32) -> f32 {
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            if g.is_finite() {
                (g - w).abs() / (w.abs() + floor)
            } else {
                f32::INFINITY
            }
        })
        .fold(0.0, f32::max)
}

/// Validates `case` on `device` against the CPU, then times `iters` runs after `warmup`.
pub fn run_case(case: &Case, device: &Device, warmup: usize, iters: usize) -> Result<Measurement> {
    let mut err = None;
    if device.is_cuda() {
        let want = (case.setup)(&Device::Cpu)?()?;
        let got = (case.setup)(device)?()?;
        if let (Some(w), Some(g)) = (want, got) {
            let e = max_rel_err(&g.to_vec_f32()?, &w.to_vec_f32()?, case.floor);
            if e > case.rtol {
                return Err(Error::Invalid(format!("{}: {device} result differs from the CPU twin (max relative error {e:.2e} > {:.0e})", case.name, case.rtol)));
            }
            err = Some(e);
        }
    }
    let mut f = (case.setup)(device)?;
    for _ in 0..warmup {
        f()?;
    }
    device.synchronize()?;
    let mut times = Vec::with_capacity(iters);
    match device {
        Device::Cuda(gpu) => {
            let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
            for _ in 0..iters {
                let start = gpu
                    .stream
                    .record_event(flags)
                    .map_err(|e| Error::cuda("event", e))?;
                f()?;
                let end = gpu
                    .stream
                    .record_event(flags)
                    .map_err(|e| Error::cuda("event", e))?;
                end.synchronize().map_err(|e| Error::cuda("event", e))?;
                times.push(
                    start
                        .elapsed_ms(&end)
                        .map_err(|e| Error::cuda("event", e))? as f64,
                );
            }
        }
        Device::Cpu => {
            for _ in 0..iters {
                let t = Instant::now();
                f()?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    Ok(Measurement {
        name: case.name.clone(),
        device: device.to_string(),
        suite: case.suite,
        gemm: case.gemm,
        median_ms: median,
        min_ms: times[0],
        tflops: case.flops / (median * 1e-3) / 1e12,
        gbps: case.bytes / (median * 1e-3) / 1e9,
        max_rel_err: err,
    })
}

/// Device-to-device copy bandwidth (GB/s, read + write counted): the practical memory peak.
pub fn measure_copy_bandwidth(device: &Device) -> Result<Option<f64>> {
    let Device::Cuda(gpu) = device else {
        return Ok(None);
    };
    let n = 256 << 20; // 1 GiB of f32
    let src = gpu.zeros::<f32>(n)?;
    let mut dst = gpu.zeros::<f32>(n)?;
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut times = Vec::new();
    for _ in 0..12 {
        let start = gpu
            .stream
            .record_event(flags)
            .map_err(|e| Error::cuda("event", e))?;
        gpu.stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| Error::cuda("copy", e))?;
        let end = gpu
            .stream
            .record_event(flags)
            .map_err(|e| Error::cuda("event", e))?;
        end.synchronize().map_err(|e| Error::cuda("event", e))?;
        times.push(
            start
                .elapsed_ms(&end)
                .map_err(|e| Error::cuda("event", e))? as f64,
        );
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(Some(
        2.0 * 4.0 * n as f64 / (times[times.len() / 2] * 1e-3) / 1e9,
    ))
}

/// Runs `f` at precision `p`: on the register-staged tensor-core kernels when `staged` (the
/// rows that compare them with the pipelined ones), otherwise on the kernels the engine picks.
fn at_precision<R>(p: Precision, staged: bool, f: impl FnOnce() -> R) -> R {
    let run = || precision::with(p, f);
    if staged {
        crate::ops::matmul_tc::register_staged(run)
    } else {
        run()
    }
}

/// A case name's precision: nothing at f32, else ` --precision P` and, for the rows on the
/// register-staged kernels, ` register-staged`.
fn precision_tag(p: Precision, staged: bool) -> String {
    match (p, staged) {
        (Precision::F32, _) => String::new(),
        (p, false) => format!(" --precision {p}"),
        (p, true) => format!(" --precision {p} register-staged"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_cases_run_and_validate_on_every_device() {
        for device in crate::testing::devices() {
            // A stream of its own: the CUDA graph cases capture theirs.
            let device = match device {
                Device::Cuda(_) => crate::testing::gpu_own_stream().unwrap_or(device),
                cpu => cpu,
            };
            for c in cases(true).unwrap() {
                let m = run_case(&c, &device, 1, 3).unwrap();
                assert!(
                    m.median_ms >= 0.0 && m.median_ms.is_finite(),
                    "{}: {m:?}",
                    c.name
                );
                assert!(m.gbps > 0.0, "{}: {m:?}", c.name);
            }
        }
    }
}
