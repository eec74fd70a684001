//! The `keel` CLI under another name, so integration tests can find it with
//! `env!("CARGO_BIN_EXE_keel-testbin")` and cargo builds it for them.

fn main() -> std::process::ExitCode {
    keel::main_entry()
}
