//! The waypoint binary: see [`waypoint::cli`].

#![forbid(unsafe_code)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    waypoint::cli::main(std::env::args_os())
}
