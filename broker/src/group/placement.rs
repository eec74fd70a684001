//! Which partition of `__consumer_offsets` holds a group: Kafka's rule, so a group lives in
//! the same partition number on Keel as on Kafka (tools that compute it agree).

/// Java's `String.hashCode` of `s` (over its UTF-16 code units).
pub(crate) fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(unit as i32))
}

/// The offsets partition of `group` among `partitions`: `abs(hash) % partitions`, where
/// Kafka's `Utils.abs` maps `i32::MIN` to 0.
pub(crate) fn partition_for(group: &str, partitions: i32) -> i32 {
    let h = java_string_hash(group);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_java() {
        // Values of "...".hashCode() in Java ("polygenelubricants" is the classic i32::MIN).
        let cases: &[(&str, i32)] = &[
            ("", 0),
            ("a", 97),
            ("g1", 3242),
            ("hello", 99_162_322),
            ("console-consumer-12345", 158_455_506),
            ("polygenelubricants", i32::MIN),
            ("grüße", 98_768_023),
            ("😀", 1_772_899),
        ];
        for (s, want) in cases {
            assert_eq!(java_string_hash(s), *want, "{s:?}");
        }
    }

    #[test]
    fn partition_rule_table() {
        let cases: &[(&str, i32, i32)] = &[
            ("g1", 50, 42),
            ("hello", 50, 22),
            ("console-consumer-12345", 50, 6),
            ("polygenelubricants", 50, 0),
            ("anything", 1, 0),
        ];
        for (g, n, want) in cases {
            assert_eq!(partition_for(g, *n), *want, "{g} over {n}");
        }
    }
}
