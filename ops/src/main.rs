//! The `keel` binary; everything lives in the library so the tests crate can run it too.

/// Hostile array length prefixes must not abort the broker (see `keel_broker::alloc_guard`).
#[global_allocator]
static ALLOC: keel::HugeAllocGuard = keel::HugeAllocGuard;

fn main() -> std::process::ExitCode {
    keel::main_entry()
}
