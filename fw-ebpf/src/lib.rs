//! Empty library target: it lets fw-user name this crate as a build
//! dependency (so cargo rebuilds fw-user when it changes), while the real
//! program is the `fw-ebpf` binary, built for bpfel-unknown-none.
#![no_std]
