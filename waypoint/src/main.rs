//! The waypoint binary: see [`waypoint::cli`].

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    waypoint::cli::main(std::env::args_os())
}
