fn main() -> anyhow::Result<()> {
    ambient_controller::cli::main(std::env::args_os())
}
