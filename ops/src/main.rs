//! The `keel` binary; everything lives in the library so the tests crate can run it too.

fn main() -> std::process::ExitCode {
    keel::main_entry()
}
