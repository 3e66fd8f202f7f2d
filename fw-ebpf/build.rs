//! Exports the parser's entry, `fw_parse`, from the kernel object: bpf-linker
//! makes every function it does not export static, and the kernel verifies
//! a static function again on every path into it, where it verifies a
//! global one once (see `parse::fw_parse`).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg-bin=fw-ebpf=--export=fw_parse,fw_parse_quoted");
    }
}
