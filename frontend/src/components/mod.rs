//! The page's components: one file each.

pub mod app;
pub mod compare;
pub mod learn;
pub mod loading;
pub mod paper;
pub mod rate;
pub mod results;
