//! `fw-bench`: the measuring half of `cargo xtask bench` (xtask/src/bench
//! orchestrates, this binary does what needs the fw libraries or has to run
//! inside a network namespace). Built with `--features bench`, run as root.
//!
//! * `policy N [--shape dense|nested]` prints a generated N-rule policy (YAML);
//! * `testrun` measures ns/packet through the real programs (part 1);
//! * `lookup` weighs the address trie against DIR-16-8-8 arrays (part 1b);
//! * `control` measures compile, load, write and map memory (part 3);
//! * `compile --shape S --sizes N,M [--repeat K]` times parsing and
//!   compiling one policy shape at each size, the median of K compiles
//!   (part 3, issue 16 item 3; `--repeat 1` under callgrind counts one);
//! * `udp-send` / `udp-recv`: the small-packet sender (sendmmsg) and its
//!   counting receiver (part 2), each run inside a namespace;
//! * `dns-query`: timed DNS queries, through fw's proxy or not (part 4).
//!
//! Results go to stdout as one JSON object.

mod control;
mod dns;
mod frames;
mod gen;
mod lookup;
#[path = "../../bench/stats.rs"]
mod stats;
mod testrun;
mod udp;

use std::process::exit;

use anyhow::{bail, Context as _, Result};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            let v = args.get(i + 1).with_context(|| format!("{name} needs a value"))?;
            v.parse().map_err(|_| anyhow::anyhow!("{name}: cannot parse {v:?}"))
        }
        None => Ok(default),
    }
}

fn list(args: &[String], name: &str, default: &str) -> Result<Vec<usize>> {
    let text: String = arg(args, name, default.to_string())?;
    text.split(',').map(|s| s.trim().parse().with_context(|| format!("{name}: {s:?}"))).collect()
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        bail!("usage: fw-bench policy|testrun|lookup|control|udp-send|udp-recv|dns-query ...")
    };
    let json = match command.as_str() {
        "policy" => {
            let rules: usize = args.get(1).context("policy N [--shape dense|nested]")?.parse()?;
            print!("{}", gen::by_shape(&arg(&args, "--shape", "dense".to_string())?, rules)?);
            return Ok(());
        }
        "testrun" => testrun::run(&testrun::Options {
            sizes: list(&args, "--sizes", "10,1000,10000,100000")?,
            repeat: arg(&args, "--repeat", 1_000_000)?,
            rounds: arg(&args, "--rounds", 5)?,
            distinct: arg(&args, "--distinct", 20_000)?,
            addr6_hash_from: arg(&args, "--addr6-hash-from", fw_common::addr6::HASH_FROM_ENTRIES)?,
        })?,
        "lookup" => lookup::run(&lookup::Options {
            sizes: list(&args, "--sizes", "10,1000,10000,100000")?,
            repeat: arg(&args, "--repeat", 100_000)?,
            sample: arg(&args, "--sample", 200)?,
            probes: arg(&args, "--probes", 20_000)?,
        })?,
        "compile" => control::compile_scaling(
            &list(&args, "--sizes", "10000,100000")?,
            &arg(&args, "--shape", "nested".to_string())?,
            arg(&args, "--repeat", 3)?,
        )?,
        "control" => control::run(arg(&args, "--rules", 100_000)?, &arg(&args, "--shape", "dense".to_string())?)?,
        "udp-send" => udp::send(
            arg(&args, "--dst", std::net::SocketAddr::from((gen::RECEIVER4, gen::UDP_PORT)))?,
            arg(&args, "--seconds", 2.0)?,
        )?,
        "udp-recv" => udp::recv(
            arg(&args, "--bind", std::net::SocketAddr::from((gen::RECEIVER4, gen::UDP_PORT)))?,
            arg(&args, "--seconds", 4.0)?,
        )?,
        "dns-query" => dns::run(&dns::Options {
            server: arg(&args, "--server", std::net::SocketAddr::from((gen::RECEIVER4, 53)))?,
            prefix: arg(&args, "--prefix", "q".to_string())?,
            first: arg(&args, "--first", 0)?,
            domain: arg(&args, "--domain", "bench.test".to_string())?,
            count: arg(&args, "--count", 1000)?,
            rate: arg(&args, "--rate", 1000)?,
        })?,
        other => bail!("unknown command {other}"),
    };
    println!("{json}");
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("fw-bench: {e:#}");
        exit(1);
    }
}
