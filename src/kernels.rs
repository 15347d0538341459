//! The CUDA kernels embedded at build time (see `build.rs`): one fatbin per `kernels/<family>.cu`.

/// One compiled kernel family.
pub struct Kernel {
    /// The file stem: `kernels/<family>.cu`.
    pub family: &'static str,
    /// sm_90 SASS + compute_90 PTX, loaded with `cuModuleLoadData`.
    pub fatbin: &'static [u8],
    /// ptxas's `-v` report: registers, spills, shared memory per kernel.
    pub ptxas: &'static str,
    /// `kernel count` lines: tensor-core instructions (HMMA, HGMMA) in each kernel's SASS, by
    /// nvdisasm at build time; `unavailable` when the build had no nvdisasm.
    pub sass: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The embedded family of that name, if this binary was built with nvcc.
pub fn find(family: &str) -> Option<&'static Kernel> {
    KERNELS.iter().find(|k| k.family == family)
}

/// How many tensor-core instructions (HMMA, HGMMA) the kernel `name` of this family has in its
/// SASS; `None` when the build could not disassemble it.
pub fn tensor_core_instructions(kernel: &Kernel, name: &str) -> Option<usize> {
    kernel.sass.lines().find_map(|line| {
        let (k, n) = line.split_once(' ')?;
        (k == name).then(|| n.parse().ok()).flatten()
    })
}

/// Per-kernel lines of the ptxas report: `(kernel, registers, spill bytes)`.
pub fn resource_usage(kernel: &Kernel) -> Vec<(String, u32, u32)> {
    let mut rows = Vec::new();
    let mut current: Option<String> = None;
    let mut spill = 0u32;
    for line in kernel.ptxas.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            current = Some(rest.trim().to_string());
            spill = 0;
        } else if line.contains("spill stores") {
            spill = line
                .split(',')
                .filter_map(|part| part.trim().split(' ').next()?.parse::<u32>().ok())
                .sum();
        } else if let (Some(name), Some(rest)) = (current.as_ref(), line.split("Used ").nth(1)) {
            let regs = rest
                .split(' ')
                .next()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            rows.push((name.clone(), regs, spill));
            current = None;
        }
    }
    rows
}
