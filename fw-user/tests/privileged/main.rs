//! Privileged end-to-end tests: the real `fw` binary loads the real eBPF
//! programs and enforces a policy on a veth pair between two network
//! namespaces that each test creates; real sockets connect through it.
//!
//! Root only. Built with `--features privileged-tests`; `cargo xtask test`
//! runs them (`cargo test -p fw-user --features privileged-tests --test
//! privileged`).
//!
//! Safety on a shared machine: `fw` is attached only to veth interfaces inside
//! namespaces a test made, and packets go only to 198.18.0.0/15 and
//! 2001:db8::/32 addresses a test assigned itself. Every namespace, pin
//! directory and child process is owned by a guard that removes it on drop,
//! panics included, and names embed the test process id so that a later run
//! sweeps what a killed run left behind (`harness::setup`).

mod ahead;
mod answers;
mod bpffs;
mod cli;
mod container;
mod crash;
mod e2e;
mod events;
mod export;
mod flood;
mod harness;
mod learn;
mod lifecycle;
mod names;
mod observe;
mod openvidu_day;
mod operate;
mod preflight;
mod stateful;
mod watch;
