//! The kubectl plugin `kubectl regroup` (found by kubectl on PATH); all of it lives in
//! `regroup::plugin`.

fn main() -> std::process::ExitCode {
    regroup::plugin::main()
}
