//! `fw` userspace: policy language, compiler, loader and CLI.

pub mod compile;
