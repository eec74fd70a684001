//! Keel's own requests (`ReplicaState`, `RaftMessages`, `QuorumState`) share one wire shape:
//! a Kafka request frame with a key far above Kafka's own, version 0, and a body that is one
//! Kafka `BYTES` field (i32 length + bytes). [`bytes_message!`](crate::bytes_message) gives a
//! type with one `Bytes` field that shape.

use anyhow::{bail, Context};
use bytes::{Buf, Bytes};
use kafka_protocol::protocol::buf::{ByteBuf, ByteBufMut};

/// Every Keel API has version 0 only.
pub const VERSIONS: kafka_protocol::protocol::VersionRange =
    kafka_protocol::protocol::VersionRange { min: 0, max: 0 };

pub fn encode_bytes<B: ByteBufMut>(
    buf: &mut B,
    body: &Bytes,
    version: i16,
    api: &str,
) -> anyhow::Result<()> {
    if version != 0 {
        bail!("{api} v{version} does not exist");
    }
    let len = i32::try_from(body.len()).with_context(|| format!("{api} body larger than 2 GiB"))?;
    buf.put_i32(len);
    buf.put_slice(body);
    Ok(())
}

pub fn decode_bytes<B: ByteBuf>(buf: &mut B, version: i16, api: &str) -> anyhow::Result<Bytes> {
    if version != 0 {
        bail!("{api} v{version} does not exist");
    }
    if buf.remaining() < 4 {
        bail!("{api} body too short");
    }
    let len = usize::try_from(buf.get_i32())
        .with_context(|| format!("{api} body has a negative length"))?;
    if buf.remaining() < len {
        bail!("{api} body says {len} bytes, {} remain", buf.remaining());
    }
    Ok(buf.get_bytes(len))
}

/// Implements the Kafka message traits for `$t`, whose field `$field: Bytes` is the whole
/// body, with request header version `$header` (1 for requests, 0 for responses).
#[macro_export]
macro_rules! bytes_message {
    ($t:ty, $field:ident, $api:literal, $header:expr) => {
        impl $crate::kafka_protocol::protocol::Message for $t {
            const VERSIONS: $crate::kafka_protocol::protocol::VersionRange =
                $crate::bytes_message::VERSIONS;
            const DEPRECATED_VERSIONS: Option<$crate::kafka_protocol::protocol::VersionRange> =
                None;
        }
        impl $crate::kafka_protocol::protocol::Encodable for $t {
            fn encode<B: $crate::kafka_protocol::protocol::buf::ByteBufMut>(
                &self,
                buf: &mut B,
                version: i16,
            ) -> anyhow::Result<()> {
                $crate::bytes_message::encode_bytes(buf, &self.$field, version, $api)
            }
            fn compute_size(&self, _version: i16) -> anyhow::Result<usize> {
                Ok(4 + self.$field.len())
            }
        }
        impl $crate::kafka_protocol::protocol::Decodable for $t {
            fn decode<B: $crate::kafka_protocol::protocol::buf::ByteBuf>(
                buf: &mut B,
                version: i16,
            ) -> anyhow::Result<Self> {
                Ok(Self {
                    $field: $crate::bytes_message::decode_bytes(buf, version, $api)?,
                })
            }
        }
        impl $crate::kafka_protocol::protocol::HeaderVersion for $t {
            fn header_version(_version: i16) -> i16 {
                $header
            }
        }
    };
}
