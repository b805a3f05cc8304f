// Link settings for the proxies' executables (ztunnel, node-agent, waypoint), included by
// each of those packages' `build.rs`.

fn main() {
    // Relative relocations packed as DT_RELR (glibc 2.36 and later) instead of one 24-byte
    // entry each: ld.so no longer reads about 400 kB of relocation table at start, which
    // otherwise stays resident for the life of the process.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build-support/pack_relocs.rs");
}
