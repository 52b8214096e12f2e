//! What a GPU launch costs on the host: the same number of launches of a kernel that does next to
//! nothing, through burn and cubecl as the decoding kernels are launched (each queued under
//! fusion, its bind group and metadata built per launch), and through raw wgpu with the pipeline
//! and bind group built once and every dispatch encoded into one command encoder: the floor a
//! recorded decode step could reach. Both wait for the GPU at the end of each round.

use std::time::Instant;

use anyhow::{Context, Result};
use burn::backend::Dispatch;
use burn::prelude::*;
use emlab_model::kernels::DecodeOps;

/// Writes `x + 1` to one value: the dispatch does no work worth timing.
const TRIVIAL_WGSL: &str = "
@group(0) @binding(0) var<storage, read_write> v: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x == 0u) { v[0] = v[0] + 1.0; }
}";

/// Microseconds per launch over `rounds` rounds of `launches`, the best round (the least
/// disturbed by anything else on the machine), after one round of warm-up.
fn best_us_per_launch(rounds: usize, launches: usize, mut round: impl FnMut()) -> f64 {
    round();
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            round();
            t.elapsed().as_secs_f64() * 1e6 / launches as f64
        })
        .fold(f64::INFINITY, f64::min)
}

pub fn cubecl(device: &Device, launches: usize, rounds: usize) -> Result<f64> {
    let x = Tensor::<1>::zeros([64], device);
    let mut failed = None;
    let us = best_us_per_launch(rounds, launches, || {
        let mut t = x.clone().into_dispatch();
        for _ in 0..launches {
            t = Dispatch::touch(t);
        }
        // Reading one value waits for every launch of the round.
        if let Err(e) = Tensor::<1>::from_dispatch(t).slice(0..1).into_data().try_to_vec::<f32>() {
            failed = Some(format!("{e:?}"));
        }
    });
    match failed {
        Some(e) => anyhow::bail!("reading the result back failed: {e}"),
        None => Ok(us),
    }
}

/// Raw wgpu on the adapter it picks first for high performance (the same one burn picks here).
pub fn raw_wgpu(launches: usize, rounds: usize) -> Result<(f64, String)> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .context("no wgpu adapter")?;
    let name = adapter.get_info().name;
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default()))
        .context("the adapter gave no device")?;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(TRIVIAL_WGSL.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 256,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry { binding: 0, resource: buffer.as_entire_binding() }],
    });
    let mut failed = None;
    let us = best_us_per_launch(rounds, launches, || {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            for _ in 0..launches {
                pass.dispatch_workgroups(1, 1, 1);
            }
        }
        queue.submit([encoder.finish()]);
        if let Err(e) = device.poll(wgpu::PollType::wait_indefinitely()) {
            failed = Some(e.to_string());
        }
    });
    match failed {
        Some(e) => anyhow::bail!("waiting for the GPU failed: {e}"),
        None => Ok((us, name)),
    }
}
