//! The backend of the Emergent Misalignment Lab: inference today; training, evaluation and the
//! OpenAI-compatible server build on it.

pub mod checkpoint;
pub mod data;
pub mod inference;
pub mod training;
