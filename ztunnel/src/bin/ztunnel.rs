fn main() -> anyhow::Result<()> {
    ztunnel::cli::ztunnel_main(std::env::args_os())
}
