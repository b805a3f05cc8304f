#![forbid(unsafe_code)]

// mimalloc returns freed memory to the OS promptly; glibc's per-thread arenas kept several
// times the live heap resident in the controller benchmark (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    ambient_controller::cli::main(std::env::args_os())
}
