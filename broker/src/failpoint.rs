//! Failure injection for the test suites, compiled only with the `test-util` feature (the
//! suites' broker binary has it; a plain build has none of this).
//!
//! `KEEL_TEST_DROP_PRODUCE_RESPONSES=<file>`: while `<file>` exists, every produce response
//! is dropped after its wait ended (the batches are appended and, with acks=all,
//! replicated): the connection is closed instead, as if the response were lost. A test
//! creates the file, lets a client's request land, kills the leader, removes the file, and
//! watches the client's retry.

/// The environment variable naming the switch file.
pub const DROP_PRODUCE_RESPONSES: &str = "KEEL_TEST_DROP_PRODUCE_RESPONSES";

/// Whether to drop the produce response about to be sent.
#[cfg(feature = "test-util")]
pub(crate) fn drop_produce_response() -> bool {
    use std::sync::OnceLock;
    static FILE: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| std::env::var_os(DROP_PRODUCE_RESPONSES).map(Into::into))
        .as_ref()
        .is_some_and(|f| f.exists())
}

/// Without `test-util`: never.
#[cfg(not(feature = "test-util"))]
#[inline(always)]
pub(crate) fn drop_produce_response() -> bool {
    false
}
