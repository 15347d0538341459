//! The mapper and its losses against PyTorch (fixtures made by scripts/make_fixtures.py).

use mindreader::models::{Mapper, MapperConfig};
use mindreader::nn::{load_safetensors, ParamStore};
use mindreader::ops::loss;
use mindreader::testing::{assert_close, devices, fixtures_dir};
use mindreader::{Device, Tape, Tensor};

fn fixture(
    name: &str,
) -> (
    Vec<(String, Tensor)>,
    std::collections::BTreeMap<String, String>,
) {
    let path = fixtures_dir().join("mapper").join(name);
    load_safetensors(&path).unwrap_or_else(|e| {
        panic!("{e} (run tests from the repository root or set MINDREADER_FIXTURES)")
    })
}

fn get(tensors: &[(String, Tensor)], name: &str, device: &Device) -> Tensor {
    tensors
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("fixture lacks {name}"))
        .1
        .to_device(device)
        .unwrap()
}

#[test]
fn mapper_forward_matches_pytorch() {
    for file in [
        "mapper_small.safetensors",
        "mapper_mind_reader_v1000.safetensors",
    ] {
        let (tensors, meta) = fixture(file);
        let num = |k: &str| meta[k].parse::<usize>().unwrap();
        let config = MapperConfig {
            voxels: num("voxels"),
            hidden: num("hidden"),
            fc_hidden: num("fc_hidden"),
            out_dim: num("out_dim"),
            res_blocks: num("res_blocks"),
        };
        for device in devices() {
            let mut store = ParamStore::new();
            let mapper = Mapper::new(config, &mut store, 0, &device).unwrap();
            let unused = store
                .assign_from(tensors.clone(), "param.", std::path::Path::new(file))
                .unwrap();
            assert_eq!(
                unused.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                ["input", "output"]
            );
            let y = mapper
                .forward(&mut Tape::inference(), &get(&tensors, "input", &device))
                .unwrap();
            let want = get(&tensors, "output", &Device::Cpu).to_vec_f32().unwrap();
            let tol = if device.is_cuda() { 1e-4 } else { 1e-5 };
            assert_close(
                &y.to_vec_f32().unwrap(),
                &want,
                tol,
                1e-6,
                &format!("{file} on {device}"),
            );
        }
    }
}

#[test]
fn mapper_gradients_flow_to_every_parameter() {
    let mut store = ParamStore::new();
    let mapper = Mapper::new(
        MapperConfig {
            voxels: 33,
            hidden: 4,
            fc_hidden: 3,
            out_dim: 5,
            res_blocks: 2,
        },
        &mut store,
        3,
        &Device::Cpu,
    )
    .unwrap();
    let x = Tensor::randn(&[4, 33], 1.0, 9, &Device::Cpu).unwrap();
    let t = Tensor::randn(&[4, 5], 1.0, 10, &Device::Cpu).unwrap();
    let mut tape = Tape::new();
    store.watch_all(&mut tape);
    let y = mapper.forward(&mut tape, &x).unwrap();
    let l = loss::mse_cos_contrastive(&mut tape, &y, &t, &loss::LossConfig::default()).unwrap();
    let g = tape.backward(&l).unwrap();
    for p in store.iter() {
        let grad = g
            .get(&p.value)
            .unwrap_or_else(|| panic!("no gradient for {}", p.name))
            .to_vec_f32()
            .unwrap();
        assert!(
            grad.iter().all(|v| v.is_finite()) && grad.iter().any(|&v| v != 0.0),
            "{}: {grad:?}",
            p.name
        );
    }
}

#[test]
fn losses_match_pytorch() {
    let (tensors, _) = fixture("losses.safetensors");
    let cfg = loss::LossConfig::default();
    for device in devices() {
        let pred = get(&tensors, "pred", &device);
        let target = get(&tensors, "target", &device);
        for name in [
            "mse",
            "cosine",
            "mse_cos",
            "contrastive",
            "mse_cos_contrastive",
        ] {
            let mut tape = Tape::new();
            tape.watch(&pred);
            let l = match name {
                "mse" => loss::mse(&mut tape, &pred, &target),
                "cosine" => loss::cosine(&mut tape, &pred, &target),
                "mse_cos" => loss::mse_cos(&mut tape, &pred, &target, cfg.cos_weight),
                "contrastive" => {
                    loss::contrastive(&mut tape, &pred, &target, cfg.temperature, cfg.lambda)
                }
                _ => loss::mse_cos_contrastive(&mut tape, &pred, &target, &cfg),
            }
            .unwrap();
            let want_l = get(&tensors, &format!("{name}.loss"), &Device::Cpu)
                .to_vec_f32()
                .unwrap();
            assert_close(
                &[l.scalar().unwrap()],
                &want_l,
                1e-5,
                1e-7,
                &format!("{name} loss on {device}"),
            );
            let g = tape
                .backward(&l)
                .unwrap()
                .get(&pred)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            let want_g = get(&tensors, &format!("{name}.grad"), &Device::Cpu)
                .to_vec_f32()
                .unwrap();
            assert_close(&g, &want_g, 1e-4, 1e-7, &format!("{name} grad on {device}"));
        }
    }
}
