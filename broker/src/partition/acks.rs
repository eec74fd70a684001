//! The acknowledgement rule of a produce, in one place: whether a partition's batches may be
//! appended for the `acks` asked, and what the producer is told once the wait for them ends.
//! The pure checks it applies are [`may_append_acks_all`] and [`check_acks_all`].

use super::WaitError;
use crate::replication::{check_acks_all, may_append_acks_all, AckCheck};
use kafka_protocol::ResponseError;

/// The acknowledgement a produce asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acks {
    /// `acks=0`: no answer at all.
    None,
    /// `acks=1`: on the leader (fsynced under `log.flush.policy=always`).
    Leader,
    /// `acks=all` (-1): below the high watermark, with at least `min.insync.replicas` in the
    /// ISR.
    All,
}

impl Acks {
    /// The wire value's meaning; `None` for a value Kafka does not define.
    pub(crate) fn from_wire(acks: i16) -> Option<Acks> {
        match acks {
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            -1 => Some(Acks::All),
            _ => None,
        }
    }
}

/// Why a produce to one partition is not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AckError {
    /// Refused before the append: the ISR is below `min.insync.replicas`.
    #[error("the isr is smaller than min.insync.replicas")]
    NotEnoughReplicas,
    /// Appended and below the HW, but the ISR shrank below `min.insync.replicas` meanwhile.
    #[error("the isr shrank below min.insync.replicas after the append")]
    NotEnoughReplicasAfterAppend,
    #[error("not acknowledged within the request timeout")]
    TimedOut,
    /// The replica lost its leadership or was deleted while the request waited.
    #[error("this broker no longer leads the partition")]
    NotLeader,
}

impl AckError {
    /// The Kafka error code a producer gets for a partition its batches were not
    /// acknowledged on.
    pub(crate) fn produce_code(self) -> ResponseError {
        match self {
            AckError::NotEnoughReplicas => ResponseError::NotEnoughReplicas,
            AckError::NotEnoughReplicasAfterAppend => ResponseError::NotEnoughReplicasAfterAppend,
            AckError::TimedOut => ResponseError::RequestTimedOut,
            AckError::NotLeader => ResponseError::NotLeaderOrFollower,
        }
    }

    /// What a group client is told when a write to the offsets topic is not acknowledged
    /// (as Kafka maps them): COORDINATOR_NOT_AVAILABLE where retrying the same coordinator
    /// may work, NOT_COORDINATOR where the client must find the coordinator again.
    pub(crate) fn coordinator_code(self) -> ResponseError {
        match self {
            AckError::NotEnoughReplicas
            | AckError::NotEnoughReplicasAfterAppend
            | AckError::TimedOut => ResponseError::CoordinatorNotAvailable,
            AckError::NotLeader => ResponseError::NotCoordinator,
        }
    }
}

/// Before appending: whether batches asking for `acks` may be appended to a partition whose
/// committed ISR has `isr_size` members.
pub(crate) fn may_append(acks: Acks, isr_size: usize, min_isr: usize) -> Result<(), AckError> {
    if acks == Acks::All && !may_append_acks_all(isr_size, min_isr) {
        return Err(AckError::NotEnoughReplicas);
    }
    Ok(())
}

/// After the wait for `end_offset` (one past the last appended offset) ended with `waited`:
/// the answer, given the HW and ISR size then.
pub(crate) fn outcome(
    acks: Acks,
    waited: Result<(), WaitError>,
    end_offset: i64,
    hw: i64,
    isr_size: usize,
    min_isr: usize,
) -> Result<(), AckError> {
    match waited {
        Err(WaitError::TimedOut) => Err(AckError::TimedOut),
        Err(WaitError::Gone) => Err(AckError::NotLeader),
        Ok(())
            if acks == Acks::All
                && check_acks_all(end_offset, hw, isr_size, min_isr)
                    == AckCheck::NotEnoughReplicasAfterAppend =>
        {
            Err(AckError::NotEnoughReplicasAfterAppend)
        }
        Ok(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values() {
        assert_eq!(Acks::from_wire(0), Some(Acks::None));
        assert_eq!(Acks::from_wire(1), Some(Acks::Leader));
        assert_eq!(Acks::from_wire(-1), Some(Acks::All));
        for bad in [2, -2, i16::MAX] {
            assert_eq!(Acks::from_wire(bad), None);
        }
    }

    #[test]
    fn only_acks_all_needs_min_isr_to_append() {
        // (acks, isr size, min isr, allowed)
        let table = [
            (Acks::All, 2, 2, true),
            (Acks::All, 1, 2, false),
            (Acks::Leader, 1, 2, true),
            (Acks::None, 1, 3, true),
        ];
        for (acks, isr, min, ok) in table {
            assert_eq!(
                may_append(acks, isr, min).is_ok(),
                ok,
                "{acks:?} {isr} {min}"
            );
        }
        assert_eq!(
            may_append(Acks::All, 0, 1),
            Err(AckError::NotEnoughReplicas)
        );
    }

    #[test]
    fn outcome_table() {
        use AckError::*;
        // (acks, waited, end offset, hw, isr size, min isr, answer)
        type Row = (
            Acks,
            Result<(), WaitError>,
            i64,
            i64,
            usize,
            usize,
            Result<(), AckError>,
        );
        let table: &[Row] = &[
            (Acks::All, Ok(()), 10, 10, 3, 2, Ok(())),
            (
                Acks::All,
                Ok(()),
                10,
                12,
                1,
                2,
                Err(NotEnoughReplicasAfterAppend),
            ),
            (Acks::Leader, Ok(()), 10, 4, 1, 2, Ok(())),
            (
                Acks::All,
                Err(WaitError::TimedOut),
                10,
                4,
                3,
                2,
                Err(TimedOut),
            ),
            (
                Acks::Leader,
                Err(WaitError::Gone),
                10,
                4,
                3,
                2,
                Err(NotLeader),
            ),
            (
                Acks::All,
                Err(WaitError::Gone),
                10,
                12,
                1,
                2,
                Err(NotLeader),
            ),
        ];
        for (i, (acks, waited, end, hw, isr, min, want)) in table.iter().enumerate() {
            let got = outcome(*acks, waited.clone(), *end, *hw, *isr, *min);
            assert_eq!(&got, want, "row {i}");
        }
    }
}
