use mindreader::models::{Mapper, MapperConfig};
use mindreader::nn::ParamStore;
use mindreader::ops::loss;
use mindreader::train::{Adam, AdamConfig};
use mindreader::{Device, Tape, Tensor};
fn main() {
    unsafe {
        println!(
            "mallopt {} {}",
            libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX),
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX)
        );
    }
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (b, v, h) = (a[0], a[1], a[2]);
    let d = Device::Cpu;
    let mut store = ParamStore::new();
    let cfg = MapperConfig {
        hidden: h,
        fc_hidden: a[3],
        res_blocks: a[4],
        ..MapperConfig::mind_reader(v, 512)
    };
    let m = Mapper::new(cfg, &mut store, 1, &d).unwrap();
    let mut adam = Adam::new(AdamConfig::adam(2e-4, 1e-5));
    let x = Tensor::randn(&[b, v], 1.0, 1, &d).unwrap();
    let t = Tensor::randn(&[b, 512], 1.0, 2, &d).unwrap();
    for i in 0..4 {
        let s = std::time::Instant::now();
        let mut tape = Tape::new();
        store.watch_all(&mut tape);
        let y = m.forward(&mut tape, &x).unwrap();
        let f = s.elapsed();
        let l = loss::mse_cos(&mut tape, &y, &t, 0.6).unwrap();
        let g = tape.backward(&l).unwrap();
        store.accumulate(&g).unwrap();
        adam.step(&mut store, 2e-4).unwrap();
        store.zero_grad();
        let fl = 3.0 * b as f64 * mindreader::bench::mapper_forward_flops(&cfg);
        println!(
            "step {i}: fwd {:?} total {:?} {:.1} GFLOP/s",
            f,
            s.elapsed(),
            fl / s.elapsed().as_secs_f64() / 1e9
        );
    }
}
