//! The `regroup` binary: every subcommand lives in the library (`regroup::cli`).

fn main() -> std::process::ExitCode {
    regroup::cli::main()
}
