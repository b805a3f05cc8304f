// Link settings for the proxies' executables (ztunnel, node-agent, waypoint), included by
// each of those packages' `build.rs`.

use std::path::Path;

fn main() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let linux_gnu = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    // Relative relocations packed as DT_RELR (glibc 2.36 and later) instead of one 24-byte
    // entry each: ld.so no longer reads about 400 kB of relocation table at start, which
    // otherwise stays resident for the life of the process.
    if linux_gnu {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // Start-up code first: `link/<bin>.order` lists the functions a proxy runs from start
    // until it is idle in the benchmark lab (`build-support/text-order.sh` writes it), and
    // the linker puts them next to each other at the start of `.text`. The kernel maps code
    // 64 KiB around each page fault, so start-up code spread over the whole text made all
    // of it resident. Release builds on x86-64 only, where rustc links with its own lld
    // (GNU ld has no `--symbol-ordering-file`); a function the list names but
    // the build no longer has is skipped quietly, so a stale list costs memory, not a build.
    // `AMBIENT_TEXT_ORDER=off` turns it off (another linker, or measuring without it).
    let order_dir = Path::new(&var("CARGO_MANIFEST_DIR")).join("link");
    // A directory: cargo reruns this when any file in it changes.
    println!("cargo:rerun-if-changed={}", order_dir.display());
    println!("cargo:rerun-if-env-changed=AMBIENT_TEXT_ORDER");
    if linux_gnu
        && var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("PROFILE") == "release"
        && var("AMBIENT_TEXT_ORDER") != "off"
    {
        for entry in std::fs::read_dir(&order_dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let (Some(bin), Some("order")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            println!(
                "cargo:rustc-link-arg-bin={bin}=-Wl,--symbol-ordering-file={}",
                path.display()
            );
            println!("cargo:rustc-link-arg-bin={bin}=-Wl,--no-warn-symbol-ordering");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build-support/proxy_link.rs");
}
