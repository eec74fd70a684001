//! Size-prefixed framing: every Kafka request and response is a big-endian `i32` length
//! followed by that many bytes.

use bytes::{Buf, BytesMut};

/// Why a frame could not be taken from the buffer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {max} bytes (socket.request.max.bytes)")]
    TooLarge { size: i64, max: usize },
    #[error("negative frame size {0}")]
    Negative(i32),
}

/// Takes one complete frame (without its size prefix) off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. The size is checked before any payload
/// arrives, so a hostile 2 GiB prefix is refused without buffering anything.
pub fn take_frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size < 0 {
        return Err(FrameError::Negative(size));
    }
    let size = size as usize;
    if size > max {
        return Err(FrameError::TooLarge {
            size: size as i64,
            max,
        });
    }
    if buf.len() < 4 + size {
        buf.reserve(4 + size - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&(payload.len() as i32).to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn takes_whole_frames_and_waits_for_partial_ones() {
        let mut buf = framed(b"hello");
        buf.extend_from_slice(&framed(b"world")[..6]);
        assert_eq!(&take_frame(&mut buf, 100).unwrap().unwrap()[..], b"hello");
        assert_eq!(take_frame(&mut buf, 100).unwrap(), None);
        buf.extend_from_slice(b"rld");
        assert_eq!(&take_frame(&mut buf, 100).unwrap().unwrap()[..], b"world");
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_oversized_and_negative_sizes_before_payload() {
        let mut buf = BytesMut::from(&0x7fff_ffffi32.to_be_bytes()[..]);
        assert_eq!(
            take_frame(&mut buf, 100 << 20),
            Err(FrameError::TooLarge {
                size: 0x7fff_ffff,
                max: 100 << 20
            })
        );
        let mut buf = BytesMut::from(&(-5i32).to_be_bytes()[..]);
        assert_eq!(take_frame(&mut buf, 100), Err(FrameError::Negative(-5)));
    }

    #[test]
    fn empty_frame_is_a_frame() {
        let mut buf = framed(b"");
        assert_eq!(take_frame(&mut buf, 10).unwrap().unwrap().len(), 0);
    }
}
