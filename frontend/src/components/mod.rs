//! The page's components: one file each.

pub mod compare;
pub mod loading;
