//! The map and program names userspace uses (fw_common::maps) are the ones
//! the kernel object defines: no name is spelled twice in a way that can
//! drift (firezone's complaint about its own code, STYLE.md point 4).
//! Reads the embedded ELF, no kernel needed.

use fw_common::maps;

fn object() -> aya_obj::Object {
    let bytes = fw_user::kernel::loader::object();
    assert!(!bytes.is_empty(), "fw-user was built without its kernel object (AYA_BUILD_SKIP)");
    aya_obj::Object::parse(bytes).expect("the embedded kernel object parses")
}

#[test]
fn every_map_userspace_pins_is_defined_by_the_kernel_object() {
    let object = object();
    for name in maps::ALL {
        assert!(object.maps.contains_key(name), "the kernel object has no map {name}");
        assert!(name.len() <= 15, "{name}: kernel object names are cut at 15 characters");
    }
}

#[test]
fn every_program_userspace_loads_is_defined_by_the_kernel_object() {
    let object = object();
    for name in [
        maps::PROG_EGRESS,
        maps::PROG_INGRESS,
        maps::PROG_NOOP,
        maps::PROG_CONNECT4,
        maps::PROG_CONNECT6,
        maps::PROG_SENDMSG4,
        maps::PROG_SENDMSG6,
    ] {
        assert!(object.programs.contains_key(name), "the kernel object has no program {name}");
    }
}
