fn main() -> anyhow::Result<()> {
    ztunnel::cli::agent_main(std::env::args_os())
}
