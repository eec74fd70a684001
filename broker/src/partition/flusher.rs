//! Group commit: a replica's flusher task, and the offset its leader's acks count from.

use super::Replica;
use crate::error::FatalSignal;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Group commit: fsync whenever something was appended since the last fsync. Appends
/// that land while an fsync runs are covered by the next one.
pub(super) async fn flusher(replica: Arc<Replica>, stop: CancellationToken, fatal: FatalSignal) {
    let mut appended = replica.appended.subscribe();
    loop {
        let target = *appended.borrow_and_update();
        // Checked after marking the value seen: a deletion that happened before (even
        // before this task first ran) is seen here, one after it wakes `changed()` below.
        // Checking only after `changed()` left a replica deleted right after it opened
        // with a flusher waiting forever, holding its files open.
        if replica.is_deleted() {
            return;
        }
        if target > *replica.durable.borrow() {
            let on_disk = replica.log.durable_end_offset();
            let durable = if on_disk >= target {
                // A follower's fetcher fsyncs before it reports the offset: nothing left to
                // flush, so no trip through the blocking pool.
                on_disk
            } else {
                let r = replica.clone();
                match tokio::task::spawn_blocking(move || r.log.flush()).await {
                    Ok(Ok(durable)) => durable,
                    Ok(Err(e)) => {
                        if !replica.is_deleted() {
                            fatal.raise(format!(
                                "{}-{}: flush failed: {e}",
                                replica.topic, replica.partition
                            ));
                        }
                        return;
                    }
                    Err(e) => {
                        fatal.raise(format!("flush task panicked: {e}"));
                        return;
                    }
                }
            };
            replica.durable.send_replace(durable);
            replica.durable_moved();
            continue;
        }
        tokio::select! {
            changed = appended.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// The offset up to which the leader's own log counts toward acks and the HW.
pub(crate) fn leader_ack_offset(flush_always: bool, leo: i64, durable: i64) -> i64 {
    if flush_always {
        durable
    } else {
        leo
    }
}
