//! Policy -> map contents.
pub mod tables;
