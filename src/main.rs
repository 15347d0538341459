//! The `mindreader` command: one subcommand per user task, each a thin call into the library.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mindreader",
    version,
    about = "Reconstruct seen images from fMRI (Mind Reader) on hand-written CUDA kernels with CPU twins"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Precision of f32 matrix products (linear, batched matmul, convolutions, forward and
    /// backward) on the GPU: f32 (the FP32 SIMT tile; PyTorch's matmul default), tf32 (inputs
    /// rounded to TensorFloat-32 on the tensor cores, f32 accumulation; PyTorch's allow_tf32) or
    /// bf16 (inputs rounded to bfloat16, f32 accumulation and results; like torch.autocast, which
    /// also puts attention's forward on the tensor cores). Weights and optimiser state stay f32.
    /// No effect on the CPU, which always computes in f32.
    #[arg(long, global = true, default_value = "f32")]
    precision: mindreader::ops::precision::Precision,
}

#[derive(Subcommand)]
enum Command {
    /// Build information, embedded kernels (registers, spills) and the devices found; or, given a
    /// .pkl/.pth, what that checkpoint holds.
    Info(cli::info::InfoArgs),
    /// A network snapshot .pkl or a mapper .pth (read as data, no Python) as mindreader checkpoints.
    Convert(cli::convert::ConvertArgs),
    /// Validate each kernel against its CPU twin, then time it (CUDA events, median of many runs).
    Bench(cli::bench::BenchArgs),
    /// The main job: synthetic fMRI → mappers → CLIP space → Lafite generator → pictures, metrics and report.html (GPU when present).
    Demo(cli::demo::DemoArgs),
    /// Generate a synthetic world (scenes, captions, a simulated subject's fMRI) as a prepared dataset.
    Synth(cli::synth::SynthArgs),
    /// Prepare a dataset from the Natural Scenes Dataset's released files (betas, ROI mask, design, stimuli, captions).
    PrepareNsd(cli::prepare_nsd::PrepareNsdArgs),
    /// Validate a prepared dataset, print its schema summary and optionally draw a contact sheet.
    Inspect(cli::inspect::InspectArgs),
    /// Train a Mind Reader mapper from a dataset's fMRI to one of its target matrices.
    TrainMapper(cli::train_mapper::TrainMapperArgs),
    /// A trained mapper's embeddings for one split of a dataset, as .npy.
    Predict(cli::predict::PredictArgs),
    /// CLIP image and/or text embeddings (PNG files, a dataset's stimuli, a caption file) as .npy.
    Embed(cli::embed::EmbedArgs),
    /// Train a small CLIP from scratch on a dataset's stimuli and captions (a CLIP directory for embed / screen-captions).
    TrainClip(cli::train_clip::TrainClipArgs),
    /// Rank each stimulus' captions with CLIP, keep the best, and write the CLIP targets.
    ScreenCaptions(cli::screen_captions::ScreenCaptionsArgs),
    /// N-way top-1 retrieval (both directions) and mean cosine of predictions, as JSON.
    EvalRetrieval(cli::eval_retrieval::EvalRetrievalArgs),
    /// Reconstructions against the seen images: pixel correlation, SSIM, 2-way identification (and with --clip: CLIP 2-way, cosine, top-1 retrieval), each with its chance level.
    EvalImages(cli::eval_images::EvalImagesArgs),
    /// Pictures from a Lafite generator conditioned on CLIP-space vectors (.npy) or text (PNGs and a grid, or .npy).
    Generate(cli::generate::GenerateArgs),
    /// Mind Reader's second stage: a Lafite generator and discriminator trained on the frozen mappers' conditions (checkpoints, resume, preview grids).
    TrainGan(cli::train_gan::TrainGanArgs),
    /// A train-gan run's G_ema on held-out fMRI: PNGs, a seen | reconstructed grid with captions, recon.npy for eval-images.
    Reconstruct(cli::reconstruct::ReconstructArgs),
}

fn main() {
    // Die quietly on a closed pipe (`mindreader info | head`) instead of panicking.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // The CPU twins allocate and free tensors of hundreds of MB every step; glibc would mmap and
    // munmap each one (page faults and TLB shootdowns cost ~2× in training). Keep them in the heap.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    let args = Args::parse();
    mindreader::ops::precision::set_default(args.precision);
    let result = match args.command {
        Command::Info(a) => cli::info::run(a),
        Command::Convert(a) => cli::convert::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Demo(a) => cli::demo::run(a),
        Command::Synth(a) => cli::synth::run(a),
        Command::PrepareNsd(a) => cli::prepare_nsd::run(a),
        Command::Inspect(a) => cli::inspect::run(a),
        Command::TrainMapper(a) => cli::train_mapper::run(a),
        Command::Predict(a) => cli::predict::run(a),
        Command::Embed(a) => cli::embed::run(a),
        Command::TrainClip(a) => cli::train_clip::run(a),
        Command::TrainGan(a) => cli::train_gan::run(a),
        Command::Reconstruct(a) => cli::reconstruct::run(a),
        Command::ScreenCaptions(a) => cli::screen_captions::run(a),
        Command::EvalRetrieval(a) => cli::eval_retrieval::run(a),
        Command::Generate(a) => cli::generate::run(a),
        Command::EvalImages(a) => cli::eval_images::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
