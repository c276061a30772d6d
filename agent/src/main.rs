fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(bootstrap_agent::exit::SUCCESS)
}
