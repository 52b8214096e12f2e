//! Sweeps: a plan file's axes (dataset, seed, rows, epochs, learning rate, LoRA rank) expanded
//! into runs, each trained and evaluated in its own folder, resumable wherever it stopped; run
//! here (`emlab sweep local`) or as a Slurm job array (`emlab sweep slurm`), and aggregated across
//! seeds (`emlab eval report --sweep`).

pub mod folder;
pub mod plan;
pub mod report;
pub mod slurm;

pub use folder::{State, SweepDir};
pub use plan::{Evaluation, Plan, Run, RunSettings};
