//! The `keel` CLI under another name, so integration tests can find it with
//! `env!("CARGO_BIN_EXE_keel-testbin")` and cargo builds it for them.

/// Hostile array length prefixes must not abort the broker (see `keel_broker::alloc_guard`).
#[global_allocator]
static ALLOC: keel::HugeAllocGuard = keel::HugeAllocGuard;

fn main() -> std::process::ExitCode {
    keel::main_entry()
}
