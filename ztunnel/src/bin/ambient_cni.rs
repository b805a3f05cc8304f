#![forbid(unsafe_code)]

//! The CNI plugin: one invocation per container event, run by the container runtime.

fn main() -> std::process::ExitCode {
    ztunnel::cni_plugin::main()
}
